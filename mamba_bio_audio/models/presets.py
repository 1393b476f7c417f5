"""Model sizes of the paper's DNA experiments (Mamba paper §4.3 / HyenaDNA): width × Mamba blocks, from about
0.26M to 40.7M parameters with the 12-token DNA vocabulary, and their size-matched Transformer++ baselines."""
from __future__ import annotations

import torch

from ..config import MambaConfig
from .transformer import TransformerConfig

# name (parameter count of the Mamba LM, vocab 12) → (d_model, n_layer)
DNA_MODEL_SIZES = {"0.26M": (64, 8), "0.68M": (96, 10), "1.4M": (128, 12), "3.5M": (192, 14), "7M": (256, 16),
                   "19M": (384, 20), "40M": (512, 24)}


def _size(name: str) -> tuple[int, int]:
    if name not in DNA_MODEL_SIZES:
        raise ValueError(f"unknown model size {name!r}; choose from {', '.join(DNA_MODEL_SIZES)}")
    return DNA_MODEL_SIZES[name]


def dna_mamba_config(name: str, **overrides) -> MambaConfig:
    """MambaConfig of a paper size (vocab 12 unless overridden)."""
    d_model, n_layer = _size(name)
    return MambaConfig(**{"d_model": d_model, "n_layer": n_layer, "vocab_size": 12, **overrides})


def parameter_count(model_class, config) -> int:
    """Parameters of a model built on the meta device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        return sum(p.numel() for p in model_class(config).parameters())


def dna_transformer_config(name: str, **overrides) -> TransformerConfig:
    """The size-matched Transformer++ of a paper size: same width, half the blocks, and the SwiGLU hidden width that
    brings its parameter count closest to the Mamba model's."""
    from .lm import MambaLMHeadModel
    from .transformer import TransformerLM

    d_model, n_layer = _size(name)
    base = TransformerConfig.matching(d_model, n_layer, vocab_size=overrides.get("vocab_size", 12))
    target = parameter_count(MambaLMHeadModel, dna_mamba_config(name, **{k: v for k, v in overrides.items()
                                                                        if k == "vocab_size"}))
    without_mlp = parameter_count(TransformerLM, TransformerConfig(**{**base.__dict__, "mlp_hidden": 8}))
    hidden = (target - without_mlp) / (3 * d_model * base.n_layer) + 8  # 3·d·h weights per SwiGLU
    base.mlp_hidden = max(8, round(hidden / 8) * 8)
    return TransformerConfig(**{**base.__dict__, **overrides})
