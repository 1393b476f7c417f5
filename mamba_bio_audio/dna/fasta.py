"""Indexed FASTA access through pysam: plain or bgzip-compressed files, the .fai (and .gzi) index built when missing,
random access without loading the genome, and errors that name the file, line and record.

pysam is imported inside the functions that need it (importing `mamba_bio_audio` must not load it).
"""
from __future__ import annotations

import contextlib
import gzip
import shutil
from pathlib import Path

from ..errors import InputError
from ..io import atomic_path
from .tokenizer import DNATokenizer

_GZIP_MAGIC = b"\x1f\x8b"


def compression(path: str | Path) -> str:
    """"plain", "bgzf" (blocked gzip: random access) or "gzip" (plain gzip: no random access)."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head[:2] != _GZIP_MAGIC:
        return "plain"
    # BGZF = gzip with the FEXTRA flag and a 'BC' extra subfield in the first member (SAM specification, §4.1)
    return "bgzf" if len(head) >= 14 and head[3] & 4 and head[12:14] == b"BC" else "gzip"


def index_paths(path: str | Path) -> list[Path]:
    """The index files pysam uses for `path`: FILE.fai, and FILE.gzi for a bgzip-compressed file."""
    path = Path(path)
    paths = [path.with_name(path.name + ".fai")]
    if compression(path) == "bgzf":
        paths.append(path.with_name(path.name + ".gzi"))
    return paths


def open_fasta(path: str | Path):
    """`pysam.FastaFile` for a plain or bgzip-compressed FASTA, building its index first if it is missing or older
    than the file. Plain gzip gets a ValueError with the one-command fix."""
    import pysam

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such FASTA file")
    if compression(path) == "gzip":
        raise InputError(f"{path}: compressed with gzip, not bgzip, so it cannot be read at random positions; "
                         f"recompress and index it (same content, same name) with: mba data index {path}")
    ensure_index(path)
    return pysam.FastaFile(str(path))


def ensure_index(path: str | Path) -> list[Path]:
    """Build the index files of a plain or bgzip FASTA if any is missing or older than the file; returns them.

    Written under temporary names and renamed, so an interrupted build leaves no truncated index. When samtools
    cannot index the file, the file is checked line by line and the first problem is reported."""
    import pysam

    path = Path(path)
    targets = index_paths(path)
    if all(t.is_file() and t.stat().st_mtime >= path.stat().st_mtime for t in targets):
        return targets
    with contextlib.ExitStack() as stack:
        temporaries = [stack.enter_context(atomic_path(t)) for t in targets]  # renamed into place on success
        options = ["--fai-idx", str(temporaries[0])] + (["--gzi-idx", str(temporaries[1])] if len(targets) > 1 else [])
        try:
            pysam.faidx(str(path), *options)
        except pysam.SamtoolsError as error:
            validate_fasta(path)  # raises a precise error for the usual problems
            raise InputError(f"{path}: samtools could not index it ({error})") from None
        # faidx accepts a header without a name and drops a record without sequence: catch both before the index
        # is kept (one pass counting headers; the line-by-line check only when something is off)
        names = [line.split("\t", 1)[0] for line in Path(temporaries[0]).read_text().splitlines()]
        headers = _count_headers(path)
        if "" in names or len(names) != headers:
            validate_fasta(path)
            raise InputError(f"{path}: {len(names)} records indexed but the file has {headers} headers")
    return targets


def _count_headers(path: Path, block: int = 1 << 22) -> int:
    """Lines starting with '>' (read in blocks: seconds for a gigabyte)."""
    count, previous = 0, b"\n"
    with open_bytes(path) as handle:
        while chunk := handle.read(block):
            count += chunk.count(b"\n>") + (previous == b"\n" and chunk[:1] == b">")
            previous = chunk[-1:]
    return count


def open_bytes(path: str | Path):
    """A binary reader of a plain, gzip or bgzip file, decompressed."""
    return (gzip.open if compression(path) != "plain" else open)(path, "rb")


def _text_lines(path: Path):
    with open_bytes(path) as handle:
        yield from handle


def validate_fasta(path: str | Path) -> dict[str, int]:
    """Check a FASTA file line by line; return {record name: length}.

    Raises ValueError naming the file, line and record for: sequence before the first header, a header without a
    name, a duplicate name, a record without sequence, lines of unequal length inside a record (all but the last
    must have one length, as faidx requires), and characters that are not IUPAC nucleotide codes."""
    path = Path(path)
    lengths: dict[str, int] = {}
    tokenizer = DNATokenizer()
    name, line_width, short_line, header_line = None, None, None, 0

    def close_record(line_number: int) -> None:
        if name is not None and lengths[name] == 0:
            raise InputError(f"{path}:{header_line}: record {name!r} has no sequence "
                             f"(next header or end of file at line {line_number})")

    number = 0
    for number, raw in enumerate(_text_lines(path), start=1):
        line = raw.rstrip(b"\r\n")
        if line.startswith(b">"):
            close_record(number)
            fields = line[1:].split()
            if not fields:
                raise InputError(f"{path}:{number}: header without a record name: {line[:60]!r}")
            name = fields[0].decode("ascii", errors="replace")
            if name in lengths:
                raise InputError(f"{path}:{number}: record {name!r} appears twice")
            lengths[name], line_width, short_line, header_line = 0, None, None, number
            continue
        if not line:
            continue
        if name is None:
            raise InputError(f"{path}:{number}: sequence before the first '>' header")
        if short_line is not None:
            raise InputError(f"{path}:{number}: record {name!r}: line {short_line} is shorter than the lines before "
                             f"it but is not the record's last line (faidx needs equal line lengths)")
        if line_width is None:
            line_width = len(line)
        elif len(line) > line_width:
            raise InputError(f"{path}:{number}: record {name!r}: line of {len(line)} bases after lines of "
                             f"{line_width} (faidx needs equal line lengths)")
        elif len(line) < line_width:
            short_line = number
        try:
            tokenizer.encode(line)
        except ValueError as error:
            raise InputError(f"{path}:{number}: record {name!r}: {error}") from None
        lengths[name] += len(line)
    close_record(number + 1)
    if not lengths:
        raise InputError(f"{path}: no FASTA records")
    return lengths


def recompress_and_index(path: str | Path) -> list[Path]:
    """`mba data index`: rewrite a gzip FASTA as bgzip under the same name (same content), then index it; a plain
    or bgzip FASTA is only indexed. Returns the index files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such FASTA file")
    if compression(path) == "gzip":
        write_bgzip(path, path)
    return ensure_index(path)


def write_bgzip(source: str | Path, target: str | Path) -> None:
    """Copy a plain, gzip or bgzip file to `target` as bgzip, under a temporary name then renamed (`source` may be
    `target`: it is read to the end before the rename). Reading gzip checks its CRC."""
    from pysam.libcbgzf import BGZFile

    with atomic_path(target) as tmp, open_bytes(source) as reader, BGZFile(str(tmp), "wb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 22)
