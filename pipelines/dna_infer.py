"""Inference over whole FASTA records with a trained DNA classifier (`mba dna classify`, `mba dna embed`).

A causal backbone streams each record in chunks, carrying its conv and SSM states (`mamba_bio_audio.streaming`),
so a record of any length (a 10 Mb chromosome) is read in bounded memory and scored exactly as in one pass; its
pooled features are the classifier's own pooling over the whole record. A bidirectional backbone cannot stream: the
record is cut into windows of the training length, and probabilities (or features) are averaged over windows.
`mba dna embed` stacks records no longer than a chunk (a window) into batches, and writes the pooled features, and
optionally the per-base hidden states, as .npy, .npz or .h5 (`embed_fasta`).
"""
from __future__ import annotations

import contextlib
import itertools
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from mamba_bio_audio.dna import DNATokenizer
from mamba_bio_audio.errors import MbaError
from mamba_bio_audio.io import atomic_path

from .dna_classifier import DNAClassifier


def record_chunks(fasta, name: str, chunk_len: int, tokenizer: DNATokenizer, path: str) -> Iterator[torch.Tensor]:
    """(1, ≤ chunk_len) int64 ids of consecutive pieces of record `name` of an open pysam FastaFile."""
    length = fasta.get_reference_length(name)
    for start in range(0, length, chunk_len):
        text = fasta.fetch(name, start, min(start + chunk_len, length))
        yield tokenizer.encode(text, name=f"{path}: {name}:{start}-{start + len(text)}")[None]


PerBaseSink = Callable[[str, int, int, np.ndarray], None]  # (record, length, start, rows (l, d) float32)


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

    @torch.no_grad()
    def embed(self, fasta, path: str, batch_size: int = 16,
              per_base: PerBaseSink | None = None) -> Iterator[tuple[list[int], torch.Tensor]]:
        """(record indices, (k, d) fp32 pooled features) for every record of an open FASTA, in batches.

        A record longer than the chunk length (the window of a bidirectional model) goes alone, through `features`.
        Shorter ones are sorted by length and stacked `batch_size` at a time, right-padded and masked: a causal
        model's positions never see the padding after them, so its features equal one record at a time (to fp32
        rounding); a bidirectional or reverse-complement model would see it, so only records of equal length share
        a batch. With `per_base`, it is called as per_base(record, length, start, rows) with the per-base
        embeddings (`per_base_tap`) of each piece of each record, in order (bounded memory for a streamed record)."""
        if batch_size < 1:
            raise ValueError(f"--batch-size must be positive, got {batch_size}")
        names = list(fasta.references)
        lengths = [fasta.get_reference_length(n) for n in names]
        short = sorted((i for i in range(len(names)) if lengths[i] <= self.chunk_len), key=lengths.__getitem__)
        for _, group in itertools.groupby(short, key=lambda i: 0 if self.causal else lengths[i]):
            group = list(group)
            for start in range(0, len(group), batch_size):
                rows = group[start:start + batch_size]
                yield rows, self._embed_batch(fasta, path, [names[i] for i in rows], [lengths[i] for i in rows],
                                              per_base)
        for i in range(len(names)):
            if lengths[i] > self.chunk_len:
                yield [i], self._embed_long(fasta, path, names[i], lengths[i], per_base)[None]

    def _embed_batch(self, fasta, path: str, names: list[str], lengths: list[int],
                     per_base: PerBaseSink | None) -> torch.Tensor:
        """(k, d) fp32 pooled features of records no longer than one chunk, in one padded batch."""
        ids = [next(record_chunks(fasta, name, self.chunk_len, self.tokenizer, path))[0] for name in names]
        ids = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=DNATokenizer.PAD_ID)
        mask = torch.arange(ids.shape[1]) < torch.tensor(lengths)[:, None]

        def write(hidden: np.ndarray) -> None:
            for row, (name, length) in enumerate(zip(names, lengths)):
                per_base(name, length, 0, hidden[row, :length])

        with self.per_base_tap(write if per_base else None):
            return self.classifier.features(ids.to(self.device), mask.to(self.device)).float().cpu()

    def _embed_long(self, fasta, path: str, name: str, length: int, per_base: PerBaseSink | None) -> torch.Tensor:
        """(d,) fp32 pooled features of one record, streamed or windowed by `features`."""
        done = 0

        def write(hidden: np.ndarray) -> None:
            nonlocal done
            per_base(name, length, done, hidden[0])
            done += hidden.shape[1]

        with self.per_base_tap(write if per_base else None):
            return self.features(fasta, name, path).cpu()

    @contextlib.contextmanager
    def per_base_tap(self, write: Callable[[np.ndarray], None] | None):
        """While open, every backbone call also hands its per-base embeddings (b, l, d) float32 to `write` (if
        given), so they come from the same pass as the pooled features: the backbone's last hidden states (after
        the final norm); for a reverse-complement-equivariant model, at each base the sum of the two strands'
        states there (h(x) and h(RC x), channels in h(x)'s order): a base pair gets the same vector read on either
        strand, and the mean over bases is the model's mean-pooled feature vector."""
        def hook(module, args, hidden):
            if self.classifier.config.rc_equivariant:
                forward, reverse = hidden.chunk(2, dim=-1)
                hidden = forward + reverse.flip(-1)
            write(hidden.float().cpu().numpy())

        handle = self.classifier.backbone.register_forward_hook(hook) if write else None
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()


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


class _NpyFile:
    """OUT.npy: the pooled matrix only (its rows are named by the .tsv index that embed_fasta writes beside it)."""

    def __init__(self, path: Path):
        self.path = path

    def pooled(self, ids: list[str], lengths: list[int], embeddings: np.ndarray) -> None:
        with open(self.path, "wb") as handle:
            np.save(handle, embeddings)

    def close(self) -> None:
        pass


class _NpzFile:
    """OUT.npz: arrays `embeddings` (records, d) float32, `ids` (records,) str, `lengths` (records,) int64 and, per
    base, `per_base/<record id>` (length, d) float32, each streamed into the archive as it is computed."""

    def __init__(self, path: Path):
        import zipfile

        self.zip = zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True)  # as np.savez
        self.member = None

    def per_base(self, name: str, length: int, start: int, rows: np.ndarray) -> None:
        if start == 0:
            self.member = self.zip.open(f"per_base/{name}.npy", "w", force_zip64=True)
            np.lib.format.write_array_header_1_0(self.member, {"descr": "<f4", "fortran_order": False,
                                                               "shape": (length, rows.shape[1])})
        self.member.write(rows.astype("<f4").tobytes())
        if start + len(rows) == length:
            self.member.close()

    def pooled(self, ids: list[str], lengths: list[int], embeddings: np.ndarray) -> None:
        for key, array in (("embeddings", embeddings), ("ids", np.array(ids, dtype=str)),
                           ("lengths", np.array(lengths, dtype=np.int64))):
            with self.zip.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)

    def close(self) -> None:
        if self.member is not None:  # an unfinished record (after an error): close it so the archive can close
            self.member.close()
        self.zip.close()


class _H5File:
    """OUT.h5: datasets `embeddings` (records, d) float32, `ids` (records,) UTF-8 strings, `lengths` (records,)
    int64 and, per base, `per_base/<record id>` (length, d) float32, written chunk by chunk. HDF5 reads "/" in a
    name as a group, so an id's "%" and "/" are written as "%25" and "%2F" (`h5_key`)."""

    def __init__(self, path: Path):
        self.h5py = _h5py()
        self.file = self.h5py.File(path, "w")

    def per_base(self, name: str, length: int, start: int, rows: np.ndarray) -> None:
        key = f"per_base/{h5_key(name)}"
        if start == 0:
            self.file.create_dataset(key, (length, rows.shape[1]), dtype="float32")
        self.file[key][start:start + len(rows)] = rows

    def pooled(self, ids: list[str], lengths: list[int], embeddings: np.ndarray) -> None:
        self.file.create_dataset("embeddings", data=embeddings)
        self.file.create_dataset("ids", data=ids, dtype=self.h5py.string_dtype("utf-8"))
        self.file.create_dataset("lengths", data=np.array(lengths, dtype=np.int64))

    def close(self) -> None:
        self.file.close()


def h5_key(record_id: str) -> str:
    """The name of a record's per-base dataset in OUT.h5: the id with "%" and "/" escaped as in a URL."""
    return record_id.replace("%", "%25").replace("/", "%2F")


EMBEDDING_FILES = {".npy": _NpyFile, ".npz": _NpzFile, ".h5": _H5File, ".hdf5": _H5File}


def _h5py():
    try:
        import h5py
    except ImportError:
        raise MbaError("writing .h5 embeddings needs h5py: pip install h5py (or mamba-bio-audio[hdf5])") from None
    return h5py


def embedding_file_type(out: Path, per_base: bool) -> type:
    """The writer class for OUT's suffix; a ValueError for an unknown suffix or per-base .npy, an MbaError without
    h5py for .h5 (all checked before any work is done)."""
    if out.suffix not in EMBEDDING_FILES:
        raise ValueError(f"--out {out}: embeddings are written as .npy, .npz or .h5 (.hdf5)")
    if per_base and out.suffix == ".npy":
        raise ValueError(f"--out {out}: per-base embeddings are one (length, d) array per record, which one .npy "
                         f"cannot hold; write {out.with_suffix('.h5')} or {out.with_suffix('.npz')}")
    if EMBEDDING_FILES[out.suffix] is _H5File:
        _h5py()
    return EMBEDDING_FILES[out.suffix]


def embed_fasta(ckpt: str, fasta_path: str, out: str, chunk_len: int = 1 << 16, window: int | None = None,
                per_base: bool = False, batch_size: int = 16) -> list[Path]:
    """Pooled (and with `per_base` per-base) embeddings of every record of a FASTA, written atomically to OUT in the
    format of its suffix; returns the paths written.

    OUT.npy: float32 (records, d) pooled features, row i for record i, and OUT.tsv (row, record, length); pooled
    only (per-base embeddings are ragged: a ValueError points to .h5 / .npz). OUT.h5 (h5py) and OUT.npz: `embeddings`
    (records, d) float32, `ids` (records,) record names, `lengths` (records,) int64, and with `per_base` one float32
    array `per_base/<record id>` (length, d) per record, streamed to the file so a long record never sits whole in
    memory. Records are embedded `batch_size` at a time as in `RecordScorer.embed`."""
    from mamba_bio_audio.dna.fasta import open_fasta
    from tqdm import tqdm

    out = Path(out)
    file_type = embedding_file_type(out, per_base)
    scorer = RecordScorer(ckpt, chunk_len, window)
    fasta = open_fasta(fasta_path)
    names = list(fasta.references)
    lengths = [fasta.get_reference_length(n) for n in names]
    embeddings = np.zeros((len(names), scorer.classifier.config.d_model), dtype=np.float32)
    with atomic_path(out) as tmp, contextlib.closing(file_type(tmp)) as file, tqdm(total=len(names),
                                                                                  desc="records") as progress:
        for rows, pooled in scorer.embed(fasta, fasta_path, batch_size, file.per_base if per_base else None):
            embeddings[rows] = pooled.numpy()
            progress.update(len(rows))
        file.pooled(names, lengths, embeddings)
    if out.suffix != ".npy":
        return [out]
    index = out.with_suffix(".tsv")
    with atomic_path(index) as tmp:
        tmp.write_text("row\trecord\tlength\n" + "".join(f"{i}\t{n}\t{length}\n"
                                                          for i, (n, length) in enumerate(zip(names, lengths))))
    return [out, index]
