"""Sequence classification: a Mamba backbone (causal or bidirectional), a pooling, a linear head."""
from __future__ import annotations

import torch
from torch import nn

from ..config import MambaConfig
from .backbone import MambaBackbone
from .pretrained import PretrainedMixin

POOLINGS = ("mean", "max", "first", "last")


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, mode: str) -> torch.Tensor:
    """hidden (b, L, d), mask (b, L) bool/0-1 of real (non-padding) positions or None -> (b, d).

    "last" takes the last real position (the readout of a causal model), "first" the first position."""
    if mask is None:
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    mask = mask.bool()
    if not bool(mask.any(1).all()):
        raise ValueError("pool: a sequence has no unmasked position")
    if mode == "mean":
        m = mask[..., None].to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1)
    if mode == "max":
        return hidden.masked_fill(~mask[..., None], float("-inf")).amax(1)
    if mode == "first":
        return hidden[:, 0]
    if mode == "last":
        last = mask.shape[1] - 1 - mask.flip(1).int().argmax(1)  # index of the last True per row
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"pooling must be one of {POOLINGS}, got {mode!r}")


class MambaForSequenceClassification(nn.Module, PretrainedMixin):
    def __init__(self, config: MambaConfig, num_classes: int, pooling: str = "mean"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if config.rc_equivariant and pooling not in ("mean", "max"):
            raise ValueError(f"an rc_equivariant classifier pools by 'mean' or 'max' (strand-symmetric), "
                             f"not {pooling!r}")
        self.config, self.num_classes, self.pooling = config, num_classes, pooling
        self.backbone = MambaBackbone(config)
        self.head = nn.Linear(config.d_model, num_classes)

    def head_kwargs(self) -> dict:
        return {"num_classes": self.num_classes, "pooling": self.pooling}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (b, L) int64, attention_mask (b, L) of real positions (None: all) -> logits (b, num_classes).

        With an rc_equivariant backbone the pooled features of the two strands are added (the second half flipped
        back along channels), so the logits of x and of its reverse complement are the same."""
        return self.head(self.features(input_ids, attention_mask))

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled backbone output the head reads: (b, d)."""
        hidden = self.backbone(input_ids)
        if not self.config.rc_equivariant:
            return pool(hidden, attention_mask, self.pooling)
        forward, reverse = hidden.chunk(2, dim=-1)  # reverse: h(RC x) flipped along length and channels
        return pool(forward, attention_mask, self.pooling) + pool(reverse, attention_mask, self.pooling).flip(-1)
