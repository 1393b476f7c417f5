"""Checkpoints of the paper's reference implementation (mamba_ssm) load into MambaLMHeadModel and ours export to that
layout. The weights are checked through an independent float64 forward written the way mamba_simple.py computes."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from mamba_bio_audio import MambaConfig, MambaLMHeadModel

D_MODEL, N_LAYER, VOCAB, PADDED, N, W = 32, 2, 50, 56, 8, 4
E, R = 2 * D_MODEL, 2  # expand 2; dt_rank ceil(32 / 16)


def reference_state(seed=0) -> dict[str, torch.Tensor]:
    """A state dict under the reference's names and shapes, with weights far from any initialisation."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    state = {"backbone.embedding.weight": rand(PADDED, D_MODEL, scale=1.0), "backbone.norm_f.weight": 1 + rand(D_MODEL)}
    for i in range(N_LAYER):
        p = f"backbone.layers.{i}."
        state |= {p + "norm.weight": 1 + rand(D_MODEL), p + "mixer.in_proj.weight": rand(2 * E, D_MODEL),
                  p + "mixer.conv1d.weight": rand(E, 1, W), p + "mixer.conv1d.bias": rand(E),
                  p + "mixer.x_proj.weight": rand(R + 2 * N, E), p + "mixer.dt_proj.weight": rand(E, R),
                  p + "mixer.dt_proj.bias": rand(E) - 3,
                  p + "mixer.A_log": torch.log(torch.rand(E, N, generator=g) * 4 + 0.5),
                  p + "mixer.D": rand(E, scale=1.0), p + "mixer.out_proj.weight": rand(D_MODEL, E)}
    state["lm_head.weight"] = state["backbone.embedding.weight"]  # tied, and saved twice in a .bin
    return state


def reference_config(**changes) -> dict:
    return {"d_model": D_MODEL, "n_layer": N_LAYER, "vocab_size": VOCAB, "ssm_cfg": {"d_state": N}, "rms_norm": True,
            "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8, **changes}


def write_reference(directory, state, config=None, safetensors=False):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config or reference_config()))
    if safetensors:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items() if k != "lm_head.weight"},
                  str(directory / "model.safetensors"))
    else:
        torch.save(state, directory / "pytorch_model.bin")
    return directory


def rms_norm(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def mamba_simple_forward(state: dict, ids: torch.Tensor) -> torch.Tensor:
    """logits (b, L, VOCAB) in float64, written out as mamba_simple.py and MambaLMHeadModel compute them."""
    s = {k: v.double() for k, v in state.items()}
    hidden, residual = s["backbone.embedding.weight"][ids], None
    length = ids.shape[1]
    for i in range(N_LAYER):
        p = f"backbone.layers.{i}."
        residual = hidden if residual is None else hidden + residual
        xz = rms_norm(residual, s[p + "norm.weight"]) @ s[p + "mixer.in_proj.weight"].T          # (b, L, 2E)
        x, z = xz.transpose(1, 2).chunk(2, dim=1)                                                   # (b, E, L)
        x = F.silu(F.conv1d(x, s[p + "mixer.conv1d.weight"], s[p + "mixer.conv1d.bias"], padding=W - 1,
                            groups=E)[..., :length])
        dt, B, C = torch.split(x.transpose(1, 2) @ s[p + "mixer.x_proj.weight"].T, [R, N, N], dim=-1)
        dt = F.softplus(dt @ s[p + "mixer.dt_proj.weight"].T + s[p + "mixer.dt_proj.bias"])          # (b, L, E)
        A = -torch.exp(s[p + "mixer.A_log"])                                                        # (E, N)
        h = torch.zeros(ids.shape[0], E, N, dtype=torch.float64)
        ys = []
        for t in range(length):
            h = torch.exp(dt[:, t, :, None] * A) * h + dt[:, t, :, None] * B[:, t, None, :] * x[:, :, t, None]
            ys.append((h * C[:, t, None, :]).sum(-1) + s[p + "mixer.D"] * x[:, :, t])
        y = torch.stack(ys, dim=1) * F.silu(z.transpose(1, 2))                                      # (b, L, E)
        hidden = y @ s[p + "mixer.out_proj.weight"].T
    out = rms_norm(hidden + residual, s["backbone.norm_f.weight"])
    return (out @ s["lm_head.weight"].T)[..., :VOCAB]


@pytest.mark.parametrize("safetensors", [False, True])
def test_a_reference_checkpoint_loads_and_computes_what_mamba_simple_computes(tmp_path, safetensors):
    state = reference_state()
    model = MambaLMHeadModel.from_pretrained(write_reference(tmp_path / "ref", state, safetensors=safetensors))
    assert model.config.d_model == D_MODEL and model.config.d_state == N and model.config.padded_vocab_size == PADDED
    ids = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        ours = model.double()(ids)
    torch.testing.assert_close(ours, mamba_simple_forward(state, ids), rtol=1e-9, atol=1e-9)


def test_mismatched_or_unsupported_reference_checkpoints_are_refused_by_name(tmp_path):
    state = reference_state()
    bad = dict(state)
    bad["backbone.layers.1.mixer.A_log"] = bad["backbone.layers.1.mixer.A_log"][:, :4]
    with pytest.raises(ValueError, match=r"pytorch_model.bin: does not match.*backbone\.layers\.1\.mixer\.A_log "
                                         r"\(64, 4\) \(expected \(64, 8\)\)"):
        MambaLMHeadModel.from_pretrained(write_reference(tmp_path / "shape", bad))
    missing = {k: v for k, v in state.items() if "layers.0.mixer.D" not in k}
    with pytest.raises(ValueError, match=r"missing \['backbone\.layers\.0\.mixer\.D'\]"):
        MambaLMHeadModel.from_pretrained(write_reference(tmp_path / "missing", missing))
    for change, message in [({"ssm_cfg": {"layer": "Mamba2"}}, "ssm_cfg.layer is 'Mamba2'"),
                            ({"rms_norm": False}, "rms_norm is false"),
                            ({"d_intermediate": 128}, "d_intermediate is 128"),
                            ({"attn_layer_idx": [1]}, r"attn_layer_idx is \[1\]"),
                            ({"ssm_cfg": {"headdim": 64}},
                             r"ssm_cfg has options this toolkit does not know: \['headdim'\]")]:
        folder = write_reference(tmp_path / message[:8].replace(" ", "_"), state, reference_config(**change))
        with pytest.raises(ValueError, match=f"config.json: {message}"):
            MambaLMHeadModel.from_pretrained(folder)
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "config.json").write_text(json.dumps(reference_config()))
    (tmp_path / "garbage" / "pytorch_model.bin").write_bytes(b"\x00not a pickle")
    with pytest.raises(ValueError, match="pytorch_model.bin: not a readable state dict"):
        MambaLMHeadModel.from_pretrained(tmp_path / "garbage")
    (tmp_path / "garbage" / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        MambaLMHeadModel.from_pretrained(tmp_path / "garbage")


def test_our_model_exports_to_the_reference_layout_and_back(tmp_path):
    torch.manual_seed(0)
    model = MambaLMHeadModel(MambaConfig(d_model=D_MODEL, n_layer=N_LAYER, vocab_size=VOCAB, d_state=N)).eval()
    model.save_pretrained(tmp_path / "export", layout="reference")
    meta = json.loads((tmp_path / "export" / "config.json").read_text())
    assert meta["ssm_cfg"]["layer"] == "Mamba1" and meta["ssm_cfg"]["d_state"] == N and meta["rms_norm"]
    state = torch.load(tmp_path / "export" / "pytorch_model.bin", weights_only=True)
    assert set(state) == set(reference_state())
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(mamba_simple_forward(state, ids).float(), model(ids), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(MambaLMHeadModel.from_pretrained(tmp_path / "export").eval()(ids), model(ids))
    with pytest.raises(ValueError, match="complex_ssm"):
        MambaLMHeadModel(MambaConfig(d_model=16, n_layer=1, complex_ssm=True)).save_pretrained(
            tmp_path / "c", layout="reference")
