"""Checkpoints in the layout of the paper's reference implementation (`mamba_ssm.MambaLMHeadModel`).

A reference checkpoint directory holds config.json, e.g.

    {"d_model": 768, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {}, "rms_norm": true,
     "residual_in_fp32": true, "fused_add_norm": true, "pad_vocab_size_multiple": 8}

(newer releases add "d_intermediate", "attn_layer_idx", "attn_cfg", "tie_embeddings"; ssm_cfg may set d_state,
d_conv, expand, dt_rank, dt_min, dt_max, dt_init_floor, conv_bias, bias and "layer": "Mamba1"), and the weights in
pytorch_model.bin (a torch.save'd state dict) or model.safetensors, under names such as

    backbone.embedding.weight                  (padded vocab, d)
    backbone.layers.{i}.norm.weight            (d,)
    backbone.layers.{i}.mixer.in_proj.weight   (2E, d)     conv1d.weight (E, 1, W), conv1d.bias (E,)
    backbone.layers.{i}.mixer.x_proj.weight    (R + 2N, E) dt_proj.weight (E, R), dt_proj.bias (E,)
    backbone.layers.{i}.mixer.A_log            (E, N)      D (E,), out_proj.weight (d, E)
    backbone.norm_f.weight                     (d,)
    lm_head.weight                             (padded vocab, d)   (left out where tied to the embedding)

Our MambaLMHeadModel uses the same module names, so loading is a config translation plus a strict check of every
name and shape. Only what our modules compute is accepted: Mamba-1 mixers, RMSNorm, no attention or MLP layers.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import MambaConfig
from ..errors import InputError
from ..io import atomic_path

REFERENCE_WEIGHTS = ("pytorch_model.bin", "model.safetensors")
SSM_FIELDS = ("d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init_floor", "conv_bias", "bias")
# reference fields that only pick kernels or are ours under the same name
IGNORED = {"fused_add_norm", "ssm_cfg", "rms_norm", "d_intermediate", "attn_layer_idx", "attn_cfg"}
SSM_IGNORED = {"layer", "dt_init", "dt_scale", "use_fast_path"}  # initialisation and kernel choices


def is_reference_config(meta: dict) -> bool:
    """A config.json of the reference implementation (ours carries "architecture")."""
    return "architecture" not in meta and "ssm_cfg" in meta


def config_from_reference(meta: dict, path: Path) -> MambaConfig:
    """The reference config.json's fields → MambaConfig; ValueError naming the file and the field for what our
    modules do not compute."""
    def refuse(what: str):
        raise InputError(f"{path}: {what}; only Mamba-1 language models with RMSNorm and no attention or MLP layers "
                         f"load into MambaLMHeadModel")

    ssm = dict(meta.get("ssm_cfg") or {})
    if ssm.get("layer", "Mamba1") != "Mamba1":
        refuse(f"ssm_cfg.layer is {ssm['layer']!r}")
    if not meta.get("rms_norm", True):
        refuse("rms_norm is false (LayerNorm)")
    if meta.get("d_intermediate", 0):
        refuse(f"d_intermediate is {meta['d_intermediate']} (MLP layers)")
    if meta.get("attn_layer_idx"):
        refuse(f"attn_layer_idx is {meta['attn_layer_idx']} (attention layers)")
    unknown = sorted(set(ssm) - set(SSM_FIELDS) - SSM_IGNORED)
    if unknown:
        refuse(f"ssm_cfg has options this toolkit does not know: {unknown}")
    ours = {k: v for k, v in meta.items() if k not in IGNORED}
    unknown = sorted(set(ours) - {f for f in MambaConfig.__dataclass_fields__})
    if unknown:
        refuse(f"unknown fields {unknown}")
    try:
        return MambaConfig(**ours, **{k: ssm[k] for k in SSM_FIELDS if k in ssm})
    except (TypeError, ValueError) as error:
        raise InputError(f"{path}: {error}") from None


def config_to_reference(config: MambaConfig) -> dict:
    """MambaConfig → the reference's config.json fields (refuses what the reference cannot build)."""
    if config.complex_ssm or config.bidirectional or config.rc_equivariant:
        raise ValueError("the reference layout holds causal real-SSM Mamba-1 language models: complex_ssm, "
                         "bidirectional and rc_equivariant models have no equivalent there")
    return {"d_model": config.d_model, "d_intermediate": 0, "n_layer": config.n_layer, "vocab_size": config.vocab_size,
            "ssm_cfg": {"layer": "Mamba1", **{k: getattr(config, k) for k in SSM_FIELDS}},
            "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": config.residual_in_fp32,
            "fused_add_norm": True, "pad_vocab_size_multiple": config.pad_vocab_size_multiple,
            "tie_embeddings": config.tie_embeddings}


def read_reference_weights(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The state dict of pytorch_model.bin or model.safetensors (the first present) and its path."""
    for name in REFERENCE_WEIGHTS:
        path = directory / name
        if path.is_file():
            try:
                if name.endswith(".bin"):
                    return torch.load(path, map_location="cpu", weights_only=True), path
                from safetensors.torch import load_file

                return load_file(str(path)), path
            except Exception as error:  # unpickling / header errors come in many types
                raise InputError(f"{path}: not a readable state dict ({type(error).__name__}: {error})") from None
    raise FileNotFoundError(f"{directory}: no weights ({' or '.join(REFERENCE_WEIGHTS)}) next to config.json")


def load_reference_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Copy `state` into `model` after checking that every name is known, none is missing and every shape matches
    (ValueError naming the file and the offending names otherwise). A tied lm_head may be left out."""
    expected = model.state_dict()
    if getattr(model.config, "tie_embeddings", False):
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
        expected = {k: v for k, v in expected.items() if k != "lm_head.weight"}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
             for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:6]}{' …' if len(missing) > 6 else ''}" if missing else "",
                 f"unexpected {unexpected[:6]}{' …' if len(unexpected) > 6 else ''}" if unexpected else "",
                 f"wrong shapes: {', '.join(wrong[:6])}" if wrong else ""]
        raise InputError(f"{path}: does not match its config.json: {'; '.join(p for p in parts if p)}")
    model.load_state_dict(state, strict=False)


def save_reference(model: torch.nn.Module, directory: Path) -> Path:
    """Write config.json and pytorch_model.bin as the reference implementation's `from_pretrained` reads them
    (each file atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    meta = config_to_reference(model.config)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / REFERENCE_WEIGHTS[0]) as tmp:
        torch.save(state, tmp)
    with atomic_path(directory / "config.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return directory
