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
        with pytest.raises(OSError, match=r"f\.bin: got 123,456 of 1,024,000 bytes; run again to resume"):
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
        with pytest.raises(OSError, match=r"missing\.bin: HTTP 404"):
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
