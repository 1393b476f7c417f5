"""Optimiser set-up shared by the training entry points."""
from __future__ import annotations

import math

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices, none on vectors (norms, biases, D) or on parameters flagged
    `_no_weight_decay` (A_log, A_imag)."""
    decay, no_decay = [], []
    for p in model.parameters():  # shared (tied) parameters are listed once
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or getattr(p, "_no_weight_decay", False) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(progress: float, warmup: float = 0.1, final_ratio: float = 0.1) -> float:
    """LR multiplier at `progress` ∈ [0, 1] of training: linear warm-up over the first `warmup` fraction, then
    cosine decay from 1 to `final_ratio`."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return progress / warmup
    cosine = 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup)))
    return final_ratio + (1 - final_ratio) * cosine
