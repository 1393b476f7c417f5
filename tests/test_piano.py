"""`mba data piano`: the music21 corpus rendered on piano by FluidSynth (skipped where either is not installed)."""
from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")

from mamba_bio_audio.cli import main  # noqa: E402
from mamba_bio_audio.data_recipes import piano as recipe  # noqa: E402

needs_tools = pytest.mark.skipif(
    shutil.which("fluidsynth") is None or importlib.util.find_spec("music21") is None
    or not any(map(lambda p: __import__("os").path.isfile(p), recipe.SOUNDFONTS)),
    reason="needs fluidsynth + fluid-soundfont-gm (apt-get) and music21 (pip)")


def test_missing_fluidsynth_or_soundfont_gets_an_install_hint(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["data", "piano", "--dest", str(tmp_path), "--pieces", "1"]) == 1
    assert "apt-get install fluidsynth fluid-soundfont-gm" in capsys.readouterr().err
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/fluidsynth")
    assert main(["data", "piano", "--dest", str(tmp_path), "--soundfont", str(tmp_path / "none.sf2")]) == 1
    assert "none.sf2" in capsys.readouterr().err and not any(tmp_path.iterdir())


@needs_tools
def test_piano_renders_mono_16k_pieces_in_a_shuffled_order_and_reruns_skip(tmp_path, capsys):
    assert main(["data", "piano", "--dest", str(tmp_path), "--pieces", "3", "--seed", "4", "--workers", "2"]) == 0
    assert "3 pieces" in capsys.readouterr().out
    files = sorted((tmp_path / "piano").glob("*.wav"))
    assert [f.name[:5] for f in files] == ["0000_", "0001_", "0002_"]
    for path in files:
        wave, rate = sf.read(path)
        assert rate == 16_000 and wave.ndim == 1 and len(wave) > 5 * 16_000 and 0.85 < np.abs(wave).max() < 0.95
        spectrum = np.abs(np.fft.rfft(wave[:16_000 * 4])) ** 2  # power, 0.25 Hz bins
        assert spectrum[80:4000].sum() > 10 * spectrum[16_000:].sum()  # more power in 20 Hz–1 kHz than above 4 kHz
    stamps = [f.stat().st_mtime_ns for f in files]
    assert main(["data", "piano", "--dest", str(tmp_path), "--pieces", "3", "--seed", "4"]) == 0
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_scores_music21_cannot_play_are_skipped_by_name_and_the_rest_rendered(monkeypatch, tmp_path, capsys):
    exceptions = pytest.importorskip("music21.exceptions21")
    monkeypatch.setattr(recipe, "tools", lambda soundfont: ("fluidsynth", tmp_path / "font.sf2"))
    chosen = recipe.corpus_pieces()
    import random
    random.Random(4).shuffle(chosen)
    bad = chosen[1][1]

    def render(score, binary, font):
        if score == bad:
            raise exceptions.Music21Exception("cannot expand Stream: badly formed repeats")
        return np.full(16_000, 0.5, dtype=np.float32)

    monkeypatch.setattr(recipe, "render", render)
    assert main(["data", "piano", "--dest", str(tmp_path), "--pieces", "3", "--seed", "4", "--workers", "1"]) == 0
    out, err = capsys.readouterr()
    assert "2 pieces" in out and "1 scores skipped" in out
    assert f"skipped {bad}: Music21Exception: cannot expand Stream" in err
    assert [f.name[:5] for f in sorted((tmp_path / "piano").glob("*"))] == ["0000_", "0002_"]
