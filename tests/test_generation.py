import pytest
import torch

from mamba_bio_audio import MambaConfig, MambaLMHeadModel
from mamba_bio_audio.generation import sample_next_token, sample_with_noise


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def draws(logits, n=2000, **kw):
    g = torch.Generator().manual_seed(0)
    return torch.stack([sample_next_token(logits, generator=g, **kw) for _ in range(n)])


def test_greedy_and_top_k_one():
    logits = torch.randn(3, 10)
    assert torch.equal(sample_next_token(logits, temperature=0), logits.argmax(-1))
    assert torch.equal(sample_next_token(logits, top_k=1), logits.argmax(-1))


def test_top_k_top_p_min_p_filters():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert set(draws(logits, top_k=2).unique().tolist()) == {0, 1}
    assert set(draws(logits, top_p=0.7).unique().tolist()) == {0, 1}  # 0.5 < 0.7 <= 0.8
    assert set(draws(logits, top_p=0.5).unique().tolist()) == {0}
    assert set(draws(logits, min_p=0.25).unique().tolist()) == {0, 1, 2}  # 0.05 < 0.25 * 0.5
    assert set(draws(logits).unique().tolist()) == {0, 1, 2, 3}
    assert set(draws(logits, allowed_token_ids=[2, 3]).unique().tolist()) == {2, 3}
    frequencies = torch.bincount(draws(logits, n=4000)[:, 0], minlength=4) / 4000
    assert torch.allclose(frequencies, probs[0], atol=0.03)


def test_gumbel_max_draws_follow_softmax_temperature_and_top_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(20_000, 4)  # one row per draw
    uniform = torch.rand(20_000, 4, generator=torch.Generator().manual_seed(1))
    frequencies = torch.bincount(sample_with_noise(logits, uniform), minlength=4) / 20_000
    assert torch.allclose(frequencies, probs, atol=0.015)
    cold = torch.bincount(sample_with_noise(logits, uniform, temperature=0.5), minlength=4) / 20_000
    assert torch.allclose(cold, probs ** 2 / (probs ** 2).sum(), atol=0.015)  # p^(1/T), renormalised
    assert set(sample_with_noise(logits, uniform, top_p=0.7).unique().tolist()) == {0, 1}
    assert torch.equal(sample_with_noise(logits, uniform, temperature=0), torch.zeros(20_000, dtype=torch.int64))
    assert torch.equal(sample_with_noise(logits, uniform), sample_with_noise(logits, uniform.clone()))  # noise decides


def test_temperature_sharpens():
    logits = torch.tensor([[1.0, 0.0]])
    cold = (draws(logits, temperature=0.25) == 0).float().mean()
    hot = (draws(logits, temperature=4.0) == 0).float().mean()
    assert cold > 0.95 and 0.5 < hot < 0.65


def test_repetition_penalty_discourages_seen_tokens():
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    assert sample_next_token(logits, torch.tensor([[0]]), temperature=0, repetition_penalty=1.5).item() == 1
    assert sample_next_token(logits, torch.tensor([[0]]), temperature=0).item() == 0


def test_generate_is_seeded_and_greedy_matches_the_parallel_forward():
    model = MambaLMHeadModel(MambaConfig(d_model=16, n_layer=2, vocab_size=12)).eval()
    prompt = torch.randint(0, 12, (2, 7))
    a = model.generate(prompt, 30, seed=3)
    b = model.generate(prompt, 30, seed=3)
    assert a.shape == (2, 37) and torch.equal(a, b) and torch.equal(a[:, :7], prompt)
    greedy = model.generate(prompt, 20, temperature=0)
    sequence = prompt
    with torch.no_grad():
        for _ in range(20):
            sequence = torch.cat([sequence, model(sequence)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(greedy, sequence)


def test_generate_pads_after_eos():
    model = MambaLMHeadModel(MambaConfig(d_model=16, n_layer=1, vocab_size=12)).eval()
    out = model.generate(torch.zeros(3, 2, dtype=torch.long), 25, seed=0, eos_token_id=5, allowed_token_ids=[5, 6])
    assert out.shape == (3, 27)
    for row in out[:, 2:]:
        hits = (row == 5).nonzero()
        if len(hits):
            assert (row[hits[0, 0]:] == 5).all()
