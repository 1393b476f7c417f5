"""Every notebook runs top to bottom on the CPU with its parameters cell's defaults (committed without outputs)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
TOOLS = {"04_audio_generation": ["espeak-ng", "fluidsynth"]}  # the offline audio stand-ins render with these
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_notebooks_are_there_and_committed_without_outputs():
    assert [p.name for p in NOTEBOOKS] == ["01_selective_scan.ipynb", "02_dna_pretraining.ipynb",
                                           "03_species_classification.ipynb", "04_audio_generation.ipynb"]
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        assert any("parameters" in c.metadata.get("tags", []) for c in notebook.cells), path.name
        assert all(not c.get("outputs") and c.get("execution_count") is None
                   for c in notebook.cells if c.cell_type == "code"), f"{path.name} has outputs"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    missing = [tool for tool in TOOLS.get(path.stem, []) if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install; `make test` installs them as root)")
    shutil.copy(ROOT / "BENCHMARKS.md", tmp_path)  # the scan notebook plots its GPU table
    monkeypatch.delenv("MBA_SCAN_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # CPU backends only: the interpreter takes minutes here
    notebook = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
