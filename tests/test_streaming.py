"""Chunked (streaming) inference equals one pass: hidden states, pooled features and the classifier's readout, for
real and complex SSMs, with chunks of uneven sizes including single tokens."""
from __future__ import annotations

import pytest
import torch

from mamba_bio_audio import MambaConfig
from mamba_bio_audio.models import MambaBackbone
from mamba_bio_audio.streaming import id_chunks, pooled_stream, stream_hidden


def uneven_chunks(ids, sizes):
    start = 0
    for size in sizes:
        yield ids[:, start:start + size]
        start += size
    assert start == ids.shape[1]


@pytest.mark.parametrize("complex_ssm", [False, True])
def test_chunked_hidden_states_equal_one_pass(complex_ssm):
    torch.manual_seed(0)
    model = MambaBackbone(MambaConfig(d_model=16, n_layer=3, vocab_size=12, d_state=4, complex_ssm=complex_ssm))
    model = model.double().eval()
    ids = torch.randint(7, 12, (2, 120))
    with torch.no_grad():
        whole = model(ids)
    parts = torch.cat(list(stream_hidden(model, uneven_chunks(ids, [1, 2, 37, 1, 64, 15]))), dim=1)
    torch.testing.assert_close(parts, whole, rtol=1e-10, atol=1e-10)
    for pooling, expected in (("mean", whole.mean(1)), ("max", whole.amax(1)), ("last", whole[:, -1])):
        torch.testing.assert_close(pooled_stream(model, id_chunks(ids, 25), pooling), expected.float(),
                                   rtol=1e-6, atol=1e-6)


def test_streaming_needs_a_causal_backbone():
    model = MambaBackbone(MambaConfig(d_model=16, n_layer=1, vocab_size=12, d_state=4, bidirectional=True))
    with pytest.raises(ValueError, match="not causal"):
        list(stream_hidden(model, id_chunks(torch.randint(7, 11, (1, 10)), 4)))
