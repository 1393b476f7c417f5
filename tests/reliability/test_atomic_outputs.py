"""Every file the toolkit writes appears complete or not at all: each write in the package happens inside
`with atomic_path(...)` (a temporary name, renamed on success, deleted on error), except the few below, which are
atomic another way. A crash in the middle of a write leaves nothing under the final name."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mamba_bio_audio.io import atomic_path

ROOT = Path(__file__).resolve().parents[2]
WRITERS = {"write_text", "write_bytes", "save", "savefig", "write", "save_file", "save_model", "savez",
           "savez_compressed", "to_csv"}
ATOMIC_ANOTHER_WAY = {  # file: (the calls allowed there, why)
    "pipelines/cli.py": (["sys.stdout.write"], "standard output"),
    "kernels/bench.py": (["stream.write"], "standard output, teed into a buffer for `--write`"),
    "pipelines/dna_context_sweep.py": (["open(run_dir / 'run.log', 'a')"],
                                       "a run's log, written while it runs (and by its resumptions)"),
    "data_recipes/sc09.py": (["(partial / name).write_text", "open(out, 'wb')"],
                             "extracted into DEST.partial, renamed to DEST once complete"),
    "data_recipes/apes.py": (["writers[sp].write"], "_AtomicWriters: temporary names renamed together at the end"),
    "data_recipes/piano.py": (["parsed.write"], "MIDI into a temporary folder"),
    "data_recipes/download.py": (["out.write"], "FILE.part, renamed after the size and checksum are verified"),
    "pipelines/dna_infer.py": (["self.member.write", "write(hidden", "open(self.path, 'wb')", "np.save(handle",
                                "self.zip.open("],
                               "the embedding files' writers, each given the temporary name of embed_fasta's "
                               "`with atomic_path(out)`"),
}


def unguarded_writes() -> list[str]:
    found = []
    for folder in ("mamba_bio_audio", "kernels", "pipelines", "data_recipes"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text())
            parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                writes_file = name == "open" and any(isinstance(a, ast.Constant) and set(str(a.value)) & set("wa")
                                                     for a in node.args[1:2])
                if name not in WRITERS and not writes_file:
                    continue
                outer, guarded = node, False
                while outer in parents and not guarded:
                    outer = parents[outer]
                    guarded = isinstance(outer, ast.With) and any("atomic_path" in ast.unparse(item.context_expr)
                                                                  for item in outer.items)
                text = ast.unparse(node)
                relative = path.relative_to(ROOT).as_posix()
                allowed = ATOMIC_ANOTHER_WAY.get(relative, ([], ""))[0]
                if not guarded and not any(call in text for call in allowed):
                    found.append(f"{relative}:{node.lineno}: {text[:90]}")
    return found


def test_every_write_goes_through_atomic_path_or_is_atomic_another_way():
    assert unguarded_writes() == []


def test_a_crash_mid_write_leaves_nothing_under_the_final_name(tmp_path):
    target = tmp_path / "model.safetensors"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a file")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"the previous version")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"the previous version" and list(tmp_path.iterdir()) == [target]


def test_the_training_metrics_log_is_replaced_whole_so_a_crash_keeps_the_last_complete_one(tmp_path, monkeypatch):
    """metrics.csv of the toolkit's CSV logger: rows and new columns accumulate across flushes (a new metric rewrites
    the header, as Lightning's does), and a write that dies halfway leaves the previous file, not a truncated one."""
    import csv

    from mamba_bio_audio.pipelines.common import AtomicCSVLogger

    logger = AtomicCSVLogger(tmp_path, name="logs")
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"train/loss": 1.5}, step=0)
    logger.save()
    logger.log_metrics({"train/loss": 1.25, "valid/loss": 2.0}, step=1)
    logger.save()
    path = tmp_path / "logs" / "version_0" / "metrics.csv"
    rows = list(csv.DictReader(path.open()))
    assert rows == [{"step": "0", "train/loss": "1.5", "valid/loss": ""},
                    {"step": "1", "train/loss": "1.25", "valid/loss": "2.0"}]
    assert "lr: 0.1" in (tmp_path / "logs" / "version_0" / "hparams.yaml").read_text()
    before = path.read_bytes()

    def dies_halfway(self, rows):
        self.writerow(rows[0])
        raise OSError("disk full")

    monkeypatch.setattr(csv.DictWriter, "writerows", dies_halfway)
    logger.log_metrics({"train/loss": 1.0}, step=2)
    with pytest.raises(OSError, match="disk full"):
        logger.save()
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["hparams.yaml", "metrics.csv"]  # no temporary left
