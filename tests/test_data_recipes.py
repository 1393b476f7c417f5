"""`mba data` recipes: resumable, verified downloads against a local HTTP server (with and without Range support),
the HG38 recipe end to end on small files, and the PyPI genomes."""
from __future__ import annotations

import gzip
import hashlib
import http.server
import threading

import pytest

pysam = pytest.importorskip("pysam")

from mamba_bio_audio.cli import main  # noqa: E402
from mamba_bio_audio.data_recipes.download import download  # noqa: E402
from mamba_bio_audio.dna.fasta import compression, open_fasta  # noqa: E402
from mamba_bio_audio.errors import DownloadError  # noqa: E402
from test_dna_data import random_genome, write_fasta  # noqa: E402


class Server:
    """Serves `files` (name → bytes) on localhost; honours Range unless ranges=False; records the Range headers;
    `truncate` sends only that many bytes of a response while announcing the full length."""

    def __init__(self, files, ranges=True):
        self.files, self.ranges, self.seen_ranges, self.truncate = files, ranges, [], None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = server.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                header = self.headers.get("Range")
                server.seen_ranges.append(header)
                if header and server.ranges:
                    start = int(header.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                self.wfile.write(payload[:server.truncate] if server.truncate is not None else payload)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def payload():
    return bytes(range(256)) * 4000  # 1 MB


@pytest.mark.parametrize("ranges", [True, False])
def test_download_resumes_a_partial_file(tmp_path, payload, ranges):
    server = Server({"f.bin": payload}, ranges=ranges)
    try:
        (tmp_path / "f.bin.part").write_bytes(payload[:300_000])
        path = download(f"{server.url}/f.bin", tmp_path / "f.bin", progress=False,
                        checksum=("sha256", hashlib.sha256(payload).hexdigest()))
    finally:
        server.close()
    assert path.read_bytes() == payload and not (tmp_path / "f.bin.part").exists()
    assert server.seen_ranges == ["bytes=300000-"]


def test_interrupted_download_keeps_the_part_and_never_the_final_name(tmp_path, payload):
    server = Server({"f.bin": payload})
    server.truncate = 123_456
    try:
        with pytest.raises(DownloadError, match=r"f\.bin: got 123,456 of 1,024,000 bytes; run again to resume"):
            download(f"{server.url}/f.bin", tmp_path / "f.bin", progress=False)
        assert not (tmp_path / "f.bin").exists() and (tmp_path / "f.bin.part").stat().st_size == 123_456
        server.truncate = None
        download(f"{server.url}/f.bin", tmp_path / "f.bin", progress=False)
    finally:
        server.close()
    assert (tmp_path / "f.bin").read_bytes() == payload and server.seen_ranges == [None, "bytes=123456-"]


def test_download_checks_the_digest_and_names_the_url(tmp_path, payload):
    server = Server({"f.bin": payload})
    try:
        with pytest.raises(ValueError, match=r"f\.bin: sha256 .* does not match"):
            download(f"{server.url}/f.bin", tmp_path / "f.bin", progress=False, checksum=("sha256", "0" * 64))
        with pytest.raises(DownloadError, match=r"missing\.bin: HTTP 404"):
            download(f"{server.url}/missing.bin", tmp_path / "m.bin", progress=False)
    finally:
        server.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def run_hg38_recipe(tmp_path, records, bed):
    """`mba data hg38` against a local server holding `records` as a gzip FASTA and `bed`; its exit code."""
    write_fasta(tmp_path / "src.fa.gz", records, compress="gzip")
    server = Server({"hg38.ml.fa.gz": (tmp_path / "src.fa.gz").read_bytes(), "sequences_human.bed": bed})
    try:
        return main(["data", "hg38", "--dest", str(tmp_path / "hg38"), "--base-url", server.url])
    finally:
        server.close()


def test_hg38_recipe_end_to_end_on_small_files(tmp_path, capsys):
    records = random_genome(5, lengths=(3000, 2048))
    bed = b"chr1\t0\t1024\ttrain\nchr1\t1024\t2048\tvalid\nchr2\t0\t1024\ttest\nchr2\t1024\t2048\ttrain\n"
    assert run_hg38_recipe(tmp_path, records, bed) == 0
    assert "intervals: train 2, valid 1, test 1" in capsys.readouterr().out
    fasta_path = tmp_path / "hg38" / "hg38.ml.fa.gz"
    assert compression(fasta_path) == "bgzf"
    fasta = open_fasta(fasta_path)
    assert all(fasta.fetch(name) == seq for name, seq in records.items())
    assert sorted(p.name for p in (tmp_path / "hg38").iterdir()) == [
        "hg38.ml.fa.gz", "hg38.ml.fa.gz.fai", "hg38.ml.fa.gz.gzi", "sequences_human.bed"]


def test_hg38_recipe_rejects_a_bed_that_does_not_fit_the_genome(tmp_path, capsys):
    bed = b"chr1\t0\t400\ttrain\nchr2\t0\t10\ttest\n"
    assert run_hg38_recipe(tmp_path, random_genome(6, lengths=(500,)), bed) == 1
    assert "sequences_human.bed:2: chromosome 'chr2' is not in the FASTA" in capsys.readouterr().err


@pytest.mark.parametrize("name, record, length", [("yeast", "NC_001133.9", 230_218),
                                                  ("fruitfly", "NC_046671.1", 1_160_600)])
def test_pypi_genome(tmp_path, name, record, length):
    assert main(["data", "pypi-genome", name, "--dest", str(tmp_path)]) == 0
    fasta = open_fasta(tmp_path / f"{name}.fa.gz")
    assert tuple(fasta.references) == (record,) and tuple(fasta.lengths) == (length,)
    assert set(fasta.fetch(record, 1000, 2000).upper()) <= set("ACGTN")
    with gzip.open(tmp_path / f"{name}.gff.gz", "rt") as annotation:
        assert annotation.readline().startswith("##gff-version 3")


def speech_commands_archive(path, digits_only_lists=False):
    """A small Speech Commands-like .tar.gz: every digit, two other words, background noise, the two lists."""
    import io
    import tarfile

    from mamba_bio_audio.data_recipes.sc09 import DIGITS

    members = {f"./{w}/spk{i}_nohash_0.wav": b"RIFF" + bytes([i]) * 40
               for w in DIGITS + ("bed", "yes") for i in range(3)}
    members["./_background_noise_/white.wav"] = b"RIFF noise"
    members["./validation_list.txt"] = "".join(f"{w}/spk0_nohash_0.wav\n" for w in DIGITS + ("bed",)).encode()
    members["./testing_list.txt"] = "".join(f"{w}/spk1_nohash_0.wav\n" for w in ("yes",) + DIGITS).encode()
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_sc09_recipe_downloads_checks_and_keeps_the_digits(tmp_path, capsys):
    archive = speech_commands_archive(tmp_path / "speech_commands_v0.02.tar.gz").read_bytes()
    server = Server({"speech_commands_v0.02.tar.gz": archive})
    try:
        args = ["data", "sc09", "--dest", str(tmp_path / "out"), "--url", f"{server.url}/speech_commands_v0.02.tar.gz"]
        assert main(args + ["--sha256", "0" * 64]) == 1
        assert "sha256" in capsys.readouterr().err.lower() and not (tmp_path / "out" / "sc09").exists()
        assert main(args + ["--sha256", hashlib.sha256(archive).hexdigest()]) == 0
    finally:
        server.close()
    assert "30 clips" in capsys.readouterr().out
    root = tmp_path / "out" / "sc09"
    assert sorted(p.name for p in root.iterdir())[:3] == ["eight", "five", "four"] and not (root / "bed").exists()
    assert not (root / "_background_noise_").exists() and len(list(root.glob("*/*.wav"))) == 30
    valid = (root / "validation_list.txt").read_text().split()
    assert len(valid) == 10 and all(not line.startswith("bed") for line in valid)
    from mamba_bio_audio.pipelines.audio_lm import sc09_split

    split = sc09_split(root)
    assert [len(split[s]) for s in ("train", "valid", "test")] == [10, 10, 10]


def test_sc09_recipe_refuses_a_corrupt_archive_and_leaves_nothing(tmp_path, capsys):
    from pathlib import Path

    from mamba_bio_audio.data_recipes.sc09 import _member_path, extract_sc09

    assert _member_path("./zero/a_nohash_0.wav") == Path("zero/a_nohash_0.wav")
    assert _member_path("../zero/a.wav") is None and _member_path("/zero/a.wav") is None
    assert _member_path("zero/../../etc/x.wav") is None and _member_path("bed/a.wav") is None
    good = speech_commands_archive(tmp_path / "a.tar.gz").read_bytes()
    (tmp_path / "bad.tar.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"bad\.tar\.gz: not a readable Speech Commands archive"):
        extract_sc09(tmp_path / "bad.tar.gz", tmp_path / "sc09")
    assert not any(p.name.startswith("sc09") for p in tmp_path.iterdir())
