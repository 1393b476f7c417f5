"""Transformer++ baseline: causal, rotary positions relative, size-matched to the paper's Mamba DNA models, trains."""
from __future__ import annotations

import pytest
import torch

from mamba_bio_audio import MambaLMHeadModel
from mamba_bio_audio.models import DNA_MODEL_SIZES, TransformerConfig, TransformerLM, dna_mamba_config
from mamba_bio_audio.models import dna_transformer_config
from mamba_bio_audio.models.presets import parameter_count
from mamba_bio_audio.models.transformer import apply_rotary, rotary_tables


def test_logits_are_causal_and_sized_to_the_vocabulary():
    torch.manual_seed(0)
    model = TransformerLM(TransformerConfig(d_model=32, n_layer=2, n_head=2, vocab_size=12)).eval()
    ids = torch.randint(0, 12, (2, 40))
    logits = model(ids)
    assert logits.shape == (2, 40, 12)
    changed = ids.clone()
    changed[:, 25:] = torch.randint(0, 12, (2, 15))
    other = model(changed)
    assert torch.allclose(logits[:, :25], other[:, :25], atol=1e-6)
    assert not torch.allclose(logits[:, 25:], other[:, 25:], atol=1e-3)


def test_rotary_scores_depend_only_on_the_offset():
    torch.manual_seed(1)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    cos, sin = rotary_tables(64, 16, 10000.0, "cpu")

    def score(m, n):
        return (apply_rotary(q, cos[m:m + 1], sin[m:m + 1]) * apply_rotary(k, cos[n:n + 1], sin[n:n + 1])).sum()

    assert torch.allclose(score(10, 3), score(40, 33), atol=1e-5)
    assert not torch.allclose(score(10, 3), score(10, 4), atol=1e-3)


@pytest.mark.parametrize("name", list(DNA_MODEL_SIZES))
def test_baseline_matches_the_mamba_size(name):
    mamba = parameter_count(MambaLMHeadModel, dna_mamba_config(name))
    config = dna_transformer_config(name)
    assert config.n_layer == DNA_MODEL_SIZES[name][1] // 2
    assert abs(parameter_count(TransformerLM, config) / mamba - 1) < 0.02


def test_it_learns_a_periodic_sequence():
    torch.manual_seed(2)
    model = TransformerLM(TransformerConfig(d_model=32, n_layer=2, n_head=2, vocab_size=12))
    ids = torch.tensor([7, 8, 9, 10, 10, 9] * 11).repeat(4, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 2.0 and losses[-1] < 0.3


def test_heads_must_have_an_even_size():
    with pytest.raises(ValueError, match="heads of even size"):
        TransformerConfig(d_model=30, n_head=2)


def test_static_kv_cache_steps_match_the_parallel_forward_over_any_attention_span():
    """The CUDA-graph mode of the KV cache (position on the device, attention over the first attend_len slots with
    the later ones masked) gives the parallel forward's logits, token by token, whatever span covers the position."""
    torch.manual_seed(3)
    model = TransformerLM(TransformerConfig(d_model=32, n_layer=2, n_head=2, vocab_size=12)).double().eval()
    ids = torch.randint(0, 12, (2, 40))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_inference_cache(2, 64, static=True)
        steps = []
        for t in range(40):
            cache.attend_len = (16, 32, 64)[min(t // 16, 2)] if t % 2 else 64  # spans that cover position t
            steps.append(model(ids[:, t:t + 1], cache=cache))
    assert int(cache.position) == 40 and cache.seqlen_offset == 0
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-10)
    cache.attend_len = 0
    with pytest.raises(ValueError, match="one token at a time"):
        model(ids[:, :1], cache=cache)


def test_audio_stepper_attends_to_a_power_of_two_span_that_covers_the_chunk():
    from mamba_bio_audio.audio.generate import Stepper

    model = TransformerLM(TransformerConfig(d_model=16, n_layer=1, n_head=2, vocab_size=256))
    stepper = Stepper(model, 1, 16000)
    assert [stepper.attend(s, 16) for s in (0, 1008, 1024, 4000, 15984)] == [1024, 1024, 2048, 4096, 16000]
