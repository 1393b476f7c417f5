"""Sample-quality scores of generated SC09 clips, from a digit classifier (as in the SaShiMi / DiffWave evaluations).

All take the classifier's outputs on a set of clips: `probs` (n, classes) class probabilities (float64 recommended)
and `features` (n, d) penultimate-layer features.

    fid            Fréchet distance between Gaussians fitted to two feature sets (generated vs training clips).
    inception_score   IS = exp(E_x KL(p(y|x) ‖ p(y))): high when each clip is one clear digit and all digits occur.
    modified_inception_score   mIS = exp(E_{x,x'} KL(p(y|x) ‖ p(y|x'))): also rewards diversity within a class.
    am_score       AM = KL(p_train(y) ‖ p(y)) + E_x H(p(y|x)): low when the class mix matches the training set's and
                   each clip is confidently classified.
"""
from __future__ import annotations

import numpy as np

EPS = 1e-12


def _kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p_i ‖ q_i) per row (natural log)."""
    return np.sum(p * (np.log(p + EPS) - np.log(q + EPS)), axis=-1)


def fid(features: np.ndarray, reference: np.ndarray) -> float:
    """‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½) between the two sets' Gaussians (features (n, d), reference (m, d))."""
    from scipy import linalg

    mu1, mu2 = features.mean(0), reference.mean(0)
    s1, s2 = np.cov(features, rowvar=False), np.cov(reference, rowvar=False)
    root = np.real(linalg.sqrtm(s1 @ s2))  # (no `disp` argument: SciPy ≥ 1.16 removed it)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * root))


def inception_score(probs: np.ndarray) -> float:
    return float(np.exp(_kl_rows(probs, probs.mean(0, keepdims=True)).mean()))


def modified_inception_score(probs: np.ndarray) -> float:
    """exp of the mean KL over all ordered pairs (x, x') (pairs of a clip with itself, KL 0, included)."""
    log = np.log(probs + EPS)
    cross = probs @ log.T                                        # (n, n): Σ_y p(y|x) log p(y|x')
    self_term = np.sum(probs * log, axis=1, keepdims=True)       # (n, 1): Σ_y p(y|x) log p(y|x)
    return float(np.exp((self_term - cross).mean()))


def am_score(probs: np.ndarray, train_probs: np.ndarray) -> float:
    entropy = -np.sum(probs * np.log(probs + EPS), axis=1).mean()
    return float(_kl_rows(train_probs.mean(0), probs.mean(0)) + entropy)


def all_scores(probs: np.ndarray, features: np.ndarray, train_probs: np.ndarray,
               train_features: np.ndarray) -> dict[str, float]:
    """{"fid", "is", "mis", "am"} of a set against the training set."""
    return {"fid": fid(features, train_features), "is": inception_score(probs),
            "mis": modified_inception_score(probs), "am": am_score(probs, train_probs)}
