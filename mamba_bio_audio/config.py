"""Model configuration: one dataclass, saved as JSON next to the weights."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields


@dataclass
class MambaConfig:
    """Hyper-parameters of a Mamba backbone (defaults: the paper's).

    d_model: residual width; n_layer: number of blocks; vocab_size: tokens the embedding knows (padded up to a
    multiple of `pad_vocab_size_multiple` for the weight matrices; logits are returned for `vocab_size` only).
    SSM: d_state N, d_conv (depthwise causal conv width), expand (inner width = expand·d_model), dt_rank
    ("auto" = ceil(d_model/16)), softplus(dt bias) log-uniform in [dt_min, dt_max]; complex_ssm uses complex A
    with S4D-Lin init (A_n = −1/2 + iπn). Bidirectional backbones (not causal: no generation) run a second Mamba
    on the reversed sequence and combine by "add" or "mul", optionally sharing in/out projections.
    rc_equivariant (DNA ids of DNATokenizer only; Caduceus-PS parameter sharing): the backbone runs the same weights
    on the sequence and on its reverse complement and returns both, (b, L, 2·d_model) = [f(x), f(RC x) flipped along
    length and channels], so that the output on RC(x) is exactly that output flipped along length and channels.
    """
    d_model: int = 128
    n_layer: int = 8
    vocab_size: int = 12
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    complex_ssm: bool = False
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True
    bidirectional: bool = False
    bidirectional_strategy: str = "add"
    bidirectional_weight_tie: bool = True
    rc_equivariant: bool = False
    extra: dict = field(default_factory=dict)  # free-form metadata (tokenizer, training recipe); not used by the model

    def __post_init__(self):
        if self.dt_rank == "auto":
            self.dt_rank = math.ceil(self.d_model / 16)
        if self.bidirectional_strategy not in ("add", "mul"):
            raise ValueError(f"bidirectional_strategy must be 'add' or 'mul', got {self.bidirectional_strategy!r}")
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand", "dt_rank"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"MambaConfig.{name} must be a positive integer, got {getattr(self, name)!r}")

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return (self.vocab_size + m - 1) // m * m

    @classmethod
    def from_dict(cls, values: dict) -> "MambaConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"MambaConfig: unknown fields {unknown}")
        return cls(**values)
