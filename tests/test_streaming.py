"""Chunked (streaming) inference equals one pass: hidden states, pooled features and the classifier's readout, for
real and complex SSMs, with chunks of uneven sizes including single tokens; a 10 Mb record streams in bounded
memory."""
from __future__ import annotations

import numpy as np
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


def test_a_10_mb_record_streams_chunk_by_chunk(tmp_path, monkeypatch):
    """A 10,000,000-base FASTA record read and pooled as `mba dna classify` / `embed` do (record_chunks into
    pooled_stream): the backbone never gets more than one chunk (memory is bounded by the chunk, not the record) and
    gets every position once; the pooled mean is that of all the positions' hidden states, and the first chunks (read
    in order) have the hidden states of one pass over that prefix: the conv and SSM states carry across chunks."""
    pytest.importorskip("pysam")
    from mamba_bio_audio.dna import DNATokenizer
    from mamba_bio_audio.dna.fasta import open_fasta
    from mamba_bio_audio.pipelines.dna_infer import record_chunks

    length, width, chunk_len, prefix_chunks = 10_000_000, 80, 1 << 16, 3
    bases = np.random.default_rng(0).choice(np.frombuffer(b"ACGT", dtype=np.uint8), size=length)
    lines = np.concatenate([bases.reshape(-1, width), np.full((length // width, 1), ord("\n"), np.uint8)], 1)
    (tmp_path / "big.fa").write_bytes(b">chr1\n" + lines.tobytes())
    model = MambaBackbone(MambaConfig(d_model=8, n_layer=1, vocab_size=12, d_state=2, expand=1)).eval()
    lengths, total, first = [], torch.zeros(1, 8, dtype=torch.float64), []
    forward = model.forward

    def recording_forward(input_ids, cache=None):
        hidden = forward(input_ids, cache=cache)
        lengths.append(input_ids.shape[1])
        total.add_(hidden.double().sum(1))
        if len(first) < prefix_chunks:
            first.append((input_ids, hidden))
        return hidden

    monkeypatch.setattr(model, "forward", recording_forward)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as under `make test`'s 2 workers: with 8 scan lanes, more threads only add waiting
    try:
        with open_fasta(tmp_path / "big.fa") as fasta:
            pooled = pooled_stream(model, record_chunks(fasta, "chr1", chunk_len, DNATokenizer(), "big.fa"), "mean")
    finally:
        torch.set_num_threads(threads)
    assert max(lengths) == chunk_len and sum(lengths) == length and len(lengths) == -(-length // chunk_len)
    torch.testing.assert_close(pooled, (total / length).float(), rtol=1e-5, atol=1e-6)
    prefix = torch.cat([ids for ids, _ in first], 1)
    assert DNATokenizer().decode(prefix[0]) == bases[:prefix.shape[1]].tobytes().decode()
    with torch.no_grad():
        torch.testing.assert_close(torch.cat([h for _, h in first], 1), forward(prefix), rtol=1e-4, atol=1e-5)
