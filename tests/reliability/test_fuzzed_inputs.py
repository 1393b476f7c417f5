"""Malformed and random files through every reader: each either reads or ends in InputError (the toolkit's own error
type, naming the file), never a traceback from inside a library and never a hang."""
from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pytest

from mamba_bio_audio.errors import InputError

pytest.importorskip("pysam")
sf = pytest.importorskip("soundfile")

pytestmark = pytest.mark.timeout(300)

VALID_FASTA = b">chr1 first\nACGTACGTNN\nACGTAC\n>chr2\nGGGGCCCCAA\n"
FASTA_LINES = [b">chr1", b">x y", b"ACGT" * 5, b"NNNNACGT", b"acgtRYKM", b">", b""]


def malformed(valid: bytes) -> dict[str, bytes]:
    """The usual ways a file arrives broken, derived from a valid one."""
    packed = gzip.compress(valid * 50)
    return {"empty": b"", "garbage": bytes(random.Random(0).randrange(256) for _ in range(3000)),
            "nul bytes": valid.replace(b"\n", b"\x00\n"), "truncated gzip": packed[:len(packed) // 2],
            "plain gzip": gzip.compress(valid), "utf-16": valid.decode("latin-1").encode("utf-16"),
            "latin-1": valid + "é\xff\n".encode("latin-1"), "crlf": valid.replace(b"\n", b"\r\n"),
            "no final newline": valid.rstrip(b"\n"), "cut mid-line": valid[:len(valid) * 2 // 3],
            "huge line": valid + b"A" * 3_000_000 + b"\n", "lone header": b">\n", "only newlines": b"\n\n\n"}


def random_text(seed: int, pieces: list[bytes]) -> bytes:
    rng = random.Random(seed)
    lines = []
    for _ in range(rng.randrange(1, 30)):
        choice = rng.random()
        if choice < 0.7:
            lines.append(rng.choice(pieces))
        elif choice < 0.85:
            lines.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))))
        else:
            lines.append(rng.choice(pieces)[: rng.randrange(0, 12)])
    return b"\n".join(lines) + (b"\n" if rng.random() < 0.8 else b"")


def outcome(read, path):
    """'ok' or 'InputError'; anything else fails the test with the file's content in the message."""
    try:
        read(path)
    except InputError as error:
        assert str(path) in str(error), f"the message does not name the file: {error}"
        return "InputError"
    except FileNotFoundError as error:  # a file the reader needs next to this one (a model's weights)
        assert str(path.parent) in str(error), f"the message does not name the file: {error}"
        return "InputError"
    except Exception as error:  # pragma: no cover - the failure being tested for
        pytest.fail(f"{type(error).__name__} from {read.__name__} on {path.read_bytes()[:200]!r}: {error}")
    return "ok"


def read_fasta(path):
    from mamba_bio_audio.dna.fasta import open_fasta

    with open_fasta(path) as fasta:
        for name in fasta.references:
            fasta.fetch(name, 0, min(20, fasta.get_reference_length(name)))


def read_demo_fasta(path):
    from mamba_bio_audio.demo import read_first_record

    read_first_record(path)


def read_bed(path):
    from mamba_bio_audio.dna.windows import read_bed as reader

    reader(path, {"chr1": 1000, "chr2": 500})


def read_labelled(path):
    from mamba_bio_audio.pipelines.dna_finetune import read_labelled as reader

    reader(path)


def read_audio(path):
    from mamba_bio_audio.audio.codec import load_audio

    load_audio(path)


def read_model(path):
    from mamba_bio_audio import MambaLMHeadModel

    MambaLMHeadModel.from_pretrained(path.parent)


def wav_bytes(tmp_path) -> bytes:
    sf.write(tmp_path / "ok.wav", np.sin(np.arange(1600) / 5).astype(np.float32), 16_000, subtype="PCM_16")
    return (tmp_path / "ok.wav").read_bytes()


CASES = {  # reader, file name, a valid file, the lines random files are made of
    "fasta": (read_fasta, "g.fa", VALID_FASTA, FASTA_LINES),
    "demo fasta": (read_demo_fasta, "g.fa", VALID_FASTA, FASTA_LINES),  # `mba demo --fasta`
    "bed": (read_bed, "r.bed", b"chr1\t0\t100\ttrain\nchr2\t10\t400\ttest\n",
            [b"chr1\t0\t100\ttrain", b"chr2\t5\t50\tvalid", b"track name=x", b"chr9\t1\t2\ttest", b"chr1\t-5\t3\ttest",
             b"chr1\t10", b"#comment"]),
    "csv": (read_labelled, "l.csv", b"name,sequence,label\na,ACGT,x\nb,GGCC,y\n",
            [b"name,sequence,label", b"a,ACGT,x", b"b,,y", b"c,ACGU,z", b",,", b'"q,ACGT,x', b"d,NNNN,x,extra"]),
    "tsv": (read_labelled, "l.tsv", b"sequence\tlabel\nACGT\tx\n",
            [b"sequence\tlabel", b"ACGT\tx", b"\t", b"AC GT\ty"]),
    "labelled fasta": (read_labelled, "l.fa", b">a label=x\nACGT\n>b label=y\nGGCC\n",
                       [b">a label=x", b">b", b"ACGT", b">c label=", b"label=y", b"NNNN"]),
    "audio": (read_audio, "a.wav", None, [b"RIFF", b"WAVEfmt ", b"data", b"\x00\x00\x01\x00"]),
    "model config": (read_model, "config.json", json.dumps({"d_model": 16, "n_layer": 1, "ssm_cfg": {}}).encode(),
                     [b"{", b"}", b'"d_model": 16,', b'"ssm_cfg": {}', b"[1, 2]", b'"n_layer": -1', b"null"]),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_malformed_and_random_files_read_or_raise_input_error(kind, tmp_path):
    read, name, valid, pieces = CASES[kind]
    valid = valid if valid is not None else wav_bytes(tmp_path)
    files = {**malformed(valid), **{f"random {seed}": random_text(seed, pieces) for seed in range(25)}}
    results = {}
    for label, content in files.items():
        folder = tmp_path / label.replace(" ", "_")
        folder.mkdir()
        path = folder / name
        path.write_bytes(content)
        results[label] = outcome(read, path)
    assert "InputError" in results.values()
    assert results["empty"] == "InputError" and results["garbage"] == "InputError", (kind, results)
