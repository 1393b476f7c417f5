"""Order-k Markov baseline for next-base prediction on DNA token ids.

Only the four bases A, C, G, T (ids 7..10, see ``DNATokenizer``) are modelled: a position counts when its target
and all k preceding tokens are bases, so N, special tokens and sequence starts are skipped. To fit on several
sequences at once, join them with an ``N_ID`` separator; no context then spans two sequences.
"""
from __future__ import annotations

import numpy as np
import torch

from .tokenizer import DNATokenizer

MAX_ORDER = 31  # contexts are base-4 codes in int64
_UNSEEN = np.iinfo(np.int64).max  # sentinel context code, larger than any real code


def _contexts_and_targets(ids: torch.Tensor | np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Base-4 context codes and target bases (0..3) of every position whose target and context are bases.

    ``ids``: 1-D integer tensor or array of token ids, shape (L,). Returns two int64 arrays of equal shape (M,),
    M <= L - order; the context code is sum_j base[t - order + j] * 4**(order - 1 - j).
    """
    array = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"expected a 1-D integer sequence of token ids, got shape {array.shape}, {array.dtype}")
    length = array.shape[0] - order
    if length <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    is_base = (array >= DNATokenizer.A_ID) & (array <= DNATokenizer.T_ID)
    bases = np.where(is_base, array - DNATokenizer.A_ID, 0).astype(np.int64)
    # non_bases[t + 1] - non_bases[t - order] = number of non-bases in the window [t - order, t]
    non_bases = np.concatenate([[0], np.cumsum(~is_base)])
    valid = non_bases[order + 1:] == non_bases[:length]
    contexts = np.zeros(length, np.int64)
    for j in range(order):
        contexts = contexts * 4 + bases[j:j + length]
    return contexts[valid], bases[order:][valid]


class MarkovModel:
    """Order-k Markov chain over A/C/G/T with additive (Laplace) smoothing ``alpha``.

    P(b | context) = (count(context, b) + alpha) / (count(context) + 4 alpha), so an unseen context gets the
    uniform 1/4 (2 bits). Counts are kept only for the contexts seen in training (compacted with np.unique, then
    np.bincount over observed-contexts x 4 cells), so memory and time stay O(L log L) whatever the order, where
    dense 4**order x 4 tables would take 0.5 GB and about a second to allocate at order 12.
    """

    def __init__(self, order: int, alpha: float = 1.0):
        if not 0 <= order <= MAX_ORDER:
            raise ValueError(f"order must be in [0, {MAX_ORDER}], got {order}")
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.order = order
        self.alpha = alpha
        self._contexts: np.ndarray | None = None  # (C + 1,) int64: sorted observed context codes, then _UNSEEN
        self._counts: np.ndarray | None = None  # (C + 1, 4) int64 next-base counts; the _UNSEEN row is all zero

    def fit(self, ids: torch.Tensor | np.ndarray) -> MarkovModel:
        """Count (context, next base) pairs in ``ids`` (1-D token ids, shape (L,)), replacing earlier counts."""
        contexts, targets = _contexts_and_targets(ids, self.order)
        observed, index = np.unique(contexts, return_inverse=True)
        self._contexts = np.append(observed, _UNSEEN)
        self._counts = np.bincount(index * 4 + targets, minlength=4 * self._contexts.size).reshape(-1, 4)
        return self

    def bits_per_base(self, ids: torch.Tensor | np.ndarray) -> float:
        """Mean -log2 P(next base | previous ``order`` bases) over the scored positions of ``ids`` (shape (L,))."""
        if self._contexts is None or self._counts is None:
            raise RuntimeError("MarkovModel.bits_per_base called before fit")
        contexts, targets = _contexts_and_targets(ids, self.order)
        if contexts.size == 0:
            raise ValueError(f"no position with a base target and {self.order} preceding bases to score")
        row = np.searchsorted(self._contexts, contexts)  # always in range thanks to the _UNSEEN sentinel
        row[self._contexts[row] != contexts] = self._contexts.size - 1
        hits = self._counts[row, targets]
        totals = self._counts.sum(axis=1)[row]
        probabilities = (hits + self.alpha) / (totals + 4 * self.alpha)
        return float(-np.log2(probabilities).mean())


def markov_baseline(train_ids: torch.Tensor | np.ndarray, eval_ids: torch.Tensor | np.ndarray,
                    orders: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 8, 10),
                    alpha: float = 1.0) -> dict[int, float]:
    """Held-out bits/base on ``eval_ids`` of a Markov model of each order fitted on ``train_ids`` (1-D token ids)."""
    return {order: MarkovModel(order, alpha).fit(train_ids).bits_per_base(eval_ids) for order in orders}
