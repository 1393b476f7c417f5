"""Inference over whole FASTA records with a trained DNA classifier (`mba dna classify`, `mba dna embed`).

A causal backbone streams each record in chunks, carrying its conv and SSM states (`mamba_bio_audio.streaming`),
so a record of any length (a 10 Mb chromosome) is read in bounded memory and scored exactly as in one pass; its
pooled features are the classifier's own pooling over the whole record. A bidirectional backbone cannot stream: the
record is cut into windows of the training length, and probabilities (or features) are averaged over windows.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from mamba_bio_audio.dna import DNATokenizer
from mamba_bio_audio.io import atomic_path

from .dna_classifier import DNAClassifier


def record_chunks(fasta, name: str, chunk_len: int, tokenizer: DNATokenizer, path: str) -> Iterator[torch.Tensor]:
    """(1, ≤ chunk_len) int64 ids of consecutive pieces of record `name` of an open pysam FastaFile."""
    length = fasta.get_reference_length(name)
    for start in range(0, length, chunk_len):
        text = fasta.fetch(name, start, min(start + chunk_len, length))
        yield tokenizer.encode(text, name=f"{path}: {name}:{start}-{start + len(text)}")[None]


class RecordScorer:
    """Pooled features and class probabilities of whole records for a DNAClassifier checkpoint."""

    def __init__(self, ckpt: str, chunk_len: int = 1 << 16, window: int | None = None, device: str | None = None):
        self.module = DNAClassifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module.to(self.device)
        self.classifier = self.module.model
        self.causal = not (self.classifier.config.bidirectional or self.classifier.config.rc_equivariant)
        if not self.causal and window is None:
            state = torch.load(ckpt, map_location="cpu", weights_only=False)
            window = state.get("datamodule_hyper_parameters", {}).get("seq_len")
            if window is None:
                raise ValueError(f"{ckpt}: a bidirectional model scores windows; give --window (its training length)")
        self.chunk_len = chunk_len if self.causal else window
        self.class_names = list(self.module.hparams.class_names)
        self.tokenizer = DNATokenizer()

    @torch.no_grad()
    def features(self, fasta, name: str, path: str) -> torch.Tensor:
        """(d,) fp32 pooled features of the record (streamed if causal, else the mean over windows)."""
        from mamba_bio_audio.streaming import pooled_stream

        chunks = (c.to(self.device) for c in record_chunks(fasta, name, self.chunk_len, self.tokenizer, path))
        if self.causal:
            return pooled_stream(self.classifier.backbone, chunks, self.classifier.pooling)[0]
        per_window = [self.classifier.features(ids) for ids in chunks]
        return torch.cat(per_window).float().mean(0)

    @torch.no_grad()
    def probabilities(self, fasta, name: str, path: str) -> torch.Tensor:
        """(classes,) class probabilities of the record: the head on the streamed features (causal), or the mean
        of the windows' probabilities (bidirectional)."""
        if self.causal:
            return self.classifier.head(self.features(fasta, name, path).to(self.device)).softmax(-1).cpu()
        probs = [self.module(ids.to(self.device)).softmax(-1)
                 for ids in record_chunks(fasta, name, self.chunk_len, self.tokenizer, path)]
        return torch.cat(probs).mean(0).cpu()


def classify_fasta(ckpt: str, fasta_path: str, out: str | None, chunk_len: int = 1 << 16,
                   window: int | None = None) -> str:
    """TSV text (record, length, one probability column per class, predicted), written atomically to `out` when
    given."""
    from mamba_bio_audio.dna.fasta import open_fasta
    from tqdm import tqdm

    scorer = RecordScorer(ckpt, chunk_len, window)
    fasta = open_fasta(fasta_path)
    lines = ["record\tlength\t" + "\t".join(f"p_{c}" for c in scorer.class_names) + "\tpredicted"]
    for name in tqdm(fasta.references, desc="records", disable=out is None):
        probs = scorer.probabilities(fasta, name, fasta_path)
        lines.append(f"{name}\t{fasta.get_reference_length(name)}\t" + "\t".join(f"{p:.6f}" for p in probs.tolist())
                     + f"\t{scorer.class_names[int(probs.argmax())]}")
    text = "\n".join(lines) + "\n"
    if out:
        with atomic_path(out) as tmp:
            tmp.write_text(text)
    return text


def embed_fasta(ckpt: str, fasta_path: str, out: str, chunk_len: int = 1 << 16, window: int | None = None) -> list[Path]:
    """OUT (.npy, float32 (records, d)) of pooled per-record features and OUT with .tsv (row, record, length),
    both atomically."""
    from mamba_bio_audio.dna.fasta import open_fasta
    from tqdm import tqdm

    out = Path(out)
    if out.suffix != ".npy":
        raise ValueError(f"--out {out}: embeddings are written as .npy")
    scorer = RecordScorer(ckpt, chunk_len, window)
    fasta = open_fasta(fasta_path)
    names = list(fasta.references)
    rows = [scorer.features(fasta, name, fasta_path).cpu().numpy() for name in tqdm(names, desc="records")]
    index = out.with_suffix(".tsv")
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, np.stack(rows).astype(np.float32))
    with atomic_path(index) as tmp:
        tmp.write_text("row\trecord\tlength\n" + "".join(
            f"{i}\t{n}\t{fasta.get_reference_length(n)}\n" for i, n in enumerate(names)))
    return [out, index]
