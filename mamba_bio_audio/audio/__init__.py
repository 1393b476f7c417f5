"""Raw audio: reading, 8-bit quantisation and model inputs (see codec), and the constants every audio module and
recipe shares (no heavy imports here)."""
from __future__ import annotations

from pathlib import Path

SAMPLE_RATE = 16_000  # the paper's audio rate (SC09, YouTubeMix)
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")  # SC09's words, in order
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def audio_files(root: str | Path) -> list[Path]:
    """The WAV/FLAC/OGG files under `root` (recursively), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder of audio files")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"{root}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    return files
