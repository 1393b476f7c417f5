"""Streaming inference of causal Mamba backbones: a sequence of any length is fed in chunks, each continuing from the
conv and SSM states the previous one left in an InferenceCache, so memory is bounded by the chunk, not the record,
and the outputs equal those of one pass (tested to float64 round-off)."""
from __future__ import annotations

from typing import Iterable, Iterator

import torch

from .models.backbone import MambaBackbone


@torch.no_grad()
def stream_hidden(backbone: MambaBackbone, chunks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """For consecutive id chunks (b, l_i) int64 of the same batch rows, yield the hidden states (b, l_i, d) that
    `backbone` gives those positions when run on the whole sequence."""
    cache = None
    for chunk in chunks:
        if cache is None:
            cache = backbone.allocate_inference_cache(chunk.shape[0])
        hidden = backbone(chunk, cache=cache)
        cache.seqlen_offset += chunk.shape[1]
        yield hidden


def pooled_stream(backbone: MambaBackbone, chunks: Iterable[torch.Tensor], pooling: str = "mean") -> torch.Tensor:
    """(b, d) fp32 pooled hidden states of a chunked sequence: "mean" and "max" over every position, "last" the
    last position's (a causal classifier's readout), computed on the fly."""
    if pooling not in ("mean", "max", "last"):
        raise ValueError(f"streaming pooling must be 'mean', 'max' or 'last', got {pooling!r}")
    pooled, count = None, 0
    for hidden in stream_hidden(backbone, chunks):
        hidden = hidden.float()
        if pooling == "mean":
            part = hidden.sum(1)
        elif pooling == "max":
            part = hidden.amax(1)
        else:
            part = hidden[:, -1]
        if pooled is None or pooling == "last":
            pooled = part
        else:
            pooled = pooled + part if pooling == "mean" else torch.maximum(pooled, part)
        count += hidden.shape[1]
    if pooled is None:
        raise ValueError("pooled_stream: no chunks")
    return pooled / count if pooling == "mean" else pooled


def id_chunks(ids: torch.Tensor, chunk_len: int) -> Iterator[torch.Tensor]:
    """Consecutive slices (b, ≤ chunk_len) of ids (b, L)."""
    if chunk_len < 1:
        raise ValueError(f"chunk_len must be positive, got {chunk_len}")
    for start in range(0, ids.shape[1], chunk_len):
        yield ids[:, start:start + chunk_len]
