import math
from collections import Counter

import numpy as np
import pytest
import torch

from mamba_bio_audio.dna import DNATokenizer, MarkovModel, markov_baseline

tok = DNATokenizer()


def brute_force_bits(train: list[int], evaluate: list[int], order: int, alpha: float) -> float:
    """Reference implementation with dictionaries over tuples of token ids."""
    def scored(ids):
        for t in range(order, len(ids)):
            window = ids[t - order:t + 1]
            if all(7 <= i <= 10 for i in window):
                yield tuple(window[:-1]), window[-1]

    pair_counts = Counter(scored(train))
    context_counts = Counter(context for context, _ in scored(train))
    logs = [-math.log2((pair_counts[(c, b)] + alpha) / (context_counts[c] + 4 * alpha)) for c, b in scored(evaluate)]
    return sum(logs) / len(logs)


def test_order0_matches_entropy():
    seq = "A" * 400 + "C" * 200 + "G" * 100 + "T" * 100  # p = 1/2, 1/4, 1/8, 1/8 -> 1.75 bits
    bits = MarkovModel(0, alpha=1e-9).fit(tok.encode(seq)).bits_per_base(tok.encode(seq))
    assert bits == pytest.approx(1.75, abs=1e-9)


def test_periodic_sequence():
    train = tok.encode("ACGT" * 500)
    held_out = tok.encode("GTAC" * 100)
    assert MarkovModel(2, alpha=1e-3).fit(train).bits_per_base(held_out) < 0.01
    assert MarkovModel(0, alpha=1e-3).fit(train).bits_per_base(held_out) == pytest.approx(2.0, abs=1e-3)


def test_unseen_context_costs_two_bits():
    model = MarkovModel(3).fit(tok.encode("AAAAAAAA"))
    assert model.bits_per_base(tok.encode("CGTCGTCG")) == pytest.approx(2.0, abs=1e-12)


def test_contexts_with_n_and_special_tokens_are_skipped():
    model = MarkovModel(1, alpha=1e-9).fit(tok.encode("AC" * 50 + "NG" * 50))
    # "NG" pairs contribute nothing (N would otherwise be miscounted as some base): every counted context is
    # A or C and predicts the other one, and G, always followed by N, is never a counted context.
    assert model.bits_per_base(tok.encode("ACACAC")) == pytest.approx(0.0, abs=1e-6)
    # scored: A->C (0 bits), G->A (unseen context, 2 bits), A->C; C->N and N->G are not scored
    assert model.bits_per_base(tok.encode("ACNGAC")) == pytest.approx(2 / 3, abs=1e-6)
    with_specials = torch.tensor([DNATokenizer.CLS_ID, 7, 8, 7, DNATokenizer.PAD_ID, 9, 7, 8])
    # scored: A->C, C->A, G->A (2 bits), A->C; nothing to or from CLS and PAD
    assert model.bits_per_base(with_specials) == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError):
        model.bits_per_base(tok.encode("ANANAN"))


@pytest.mark.parametrize("order", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("alpha", [1.0, 0.1])
def test_matches_brute_force(order, alpha):
    rng = np.random.default_rng(order)
    probabilities = [0.3, 0.2, 0.15, 0.25, 0.05, 0.05]  # A C G T N PAD
    choices = [7, 8, 9, 10, 11, DNATokenizer.PAD_ID]
    train = rng.choice(choices, p=probabilities, size=3000)
    evaluate = rng.choice(choices, p=probabilities, size=1000)
    expected = brute_force_bits(train.tolist(), evaluate.tolist(), order, alpha)
    assert MarkovModel(order, alpha).fit(train).bits_per_base(torch.from_numpy(evaluate)) == \
        pytest.approx(expected, abs=1e-9)


def test_markov_baseline_returns_every_order():
    rng = np.random.default_rng(0)
    train, evaluate = rng.integers(7, 11, size=20_000), rng.integers(7, 11, size=5_000)
    result = markov_baseline(train, evaluate, orders=(0, 2, 12))
    assert list(result) == [0, 2, 12]
    assert result[0] == pytest.approx(2.0, abs=0.01)  # iid uniform bases
    assert result[12] == pytest.approx(2.0, abs=1e-3)  # nearly every 12-mer context is unseen
    assert result == markov_baseline(torch.from_numpy(train), evaluate, orders=(0, 2, 12))


def test_invalid_arguments():
    with pytest.raises(ValueError):
        MarkovModel(-1)
    with pytest.raises(ValueError):
        MarkovModel(2, alpha=0.0)
    with pytest.raises(RuntimeError):
        MarkovModel(2).bits_per_base(tok.encode("ACGT"))
    with pytest.raises(ValueError):
        MarkovModel(1).fit(np.array([[7, 8]]))
