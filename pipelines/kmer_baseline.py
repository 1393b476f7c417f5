"""k-mer baseline for labelled DNA (`mba dna kmer-baseline`): counts of every k-mer for k = 1 … k_max, normalised
per sequence (with `both_strands`, counted on the sequence and on its reverse complement: strand-symmetric
features, the k-mer analogue of strand augmentation), and a logistic regression (scikit-learn) whose
regularisation is chosen on the validation set."""
from __future__ import annotations

from .dna_classifier import classification_metrics
from .dna_finetune import read_labelled

_COMPLEMENT = str.maketrans("ACGTN", "TGCAN")


def kmer_baseline(train: str, valid: str, test: str, k_max: int = 6, both_strands: bool = False) -> dict[str, float]:
    """Test metrics (accuracy, mcc, f1, auroc) and the chosen C of the best validation MCC."""
    import numpy as np
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import matthews_corrcoef
    from sklearn.preprocessing import normalize

    data = {split: read_labelled(path) for split, path in (("train", train), ("valid", valid), ("test", test))}
    names = sorted({label for _, _, label in data["train"]})

    def strands(rows):
        sequences = [s.upper() for _, s, _ in rows]
        return (sequences, [s[::-1].translate(_COMPLEMENT) for s in sequences]) if both_strands else (sequences,)

    vectorizer = CountVectorizer(analyzer="char", ngram_range=(1, k_max), lowercase=False)
    vectorizer.fit([s for strand in strands(data["train"]) for s in strand])

    def counts(rows):
        return sum(vectorizer.transform(strand) for strand in strands(rows))

    features = {split: normalize(counts(rows), norm="l1") for split, rows in data.items()}
    labels = {split: np.array([names.index(label) for _, _, label in rows]) for split, rows in data.items()}
    best = None
    for c in (0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5):
        model = LogisticRegression(C=c, max_iter=2000).fit(features["train"], labels["train"])
        score = matthews_corrcoef(labels["valid"], model.predict(features["valid"]))
        if best is None or score > best[0]:
            best = (score, c, model)
    metrics = classification_metrics(best[2].predict_proba(features["test"]), labels["test"], names)
    return {k: v for k, v in metrics.items() if k in ("accuracy", "mcc", "f1", "auroc")} | {"C": best[1]}
