"""`mba data spoken-digits`: espeak-ng renders the SC09 layout (skipped where espeak-ng is not installed)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")

from mamba_bio_audio.cli import main  # noqa: E402
from mamba_bio_audio.data_recipes.spoken_digits import DIGITS, spoken_digits, split_of  # noqa: E402

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt-get install espeak-ng)")


def test_speaker_split_is_a_stable_hash_with_the_right_proportions():
    splits = [split_of(f"speaker{i}") for i in range(5000)]
    assert splits == [split_of(f"speaker{i}") for i in range(5000)]
    assert 0.07 < splits.count("valid") / 5000 < 0.13 and 0.07 < splits.count("test") / 5000 < 0.13


def test_missing_espeak_gets_an_install_hint(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["data", "spoken-digits", "--dest", str(tmp_path), "--speakers", "1"]) == 1
    assert "apt-get install espeak-ng" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@needs_espeak
def test_spoken_digits_have_the_sc09_layout_and_a_rerun_keeps_the_clips(tmp_path):
    from mamba_bio_audio.pipelines.audio_lm import sc09_split

    counts = spoken_digits(tmp_path, speakers=20, progress=False)
    assert sum(counts.values()) == 200 and counts["valid"] and counts["test"]
    clips = sorted(tmp_path.glob("*/*_nohash_0.wav"))
    assert len(clips) == 200 and {p.parent.name for p in clips} == set(DIGITS)
    for path in clips[::23]:
        wave, rate = sf.read(path)
        assert rate == 16_000 and wave.shape == (16_000,) and 0.25 < np.abs(wave).max() <= 1.0
        assert np.abs(wave).mean() > 0.005  # speech, not silence
    listed = ((tmp_path / "validation_list.txt").read_text().split()
              + (tmp_path / "testing_list.txt").read_text().split())
    assert len(listed) == counts["valid"] + counts["test"] and all((tmp_path / name).is_file() for name in listed)
    speakers = {p.name.split("_")[0] for p in clips}
    assert all(sum(p.name.startswith(s) for p in clips) == 10 for s in speakers)  # each speaker says every digit
    split = sc09_split(tmp_path)
    assert {split_name: len(paths) for split_name, paths in split.items()} == counts
    stamps = {p: p.stat().st_mtime_ns for p in clips}
    spoken_digits(tmp_path, speakers=20, progress=False)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
