"""`mba data spoken-digits`: an offline stand-in for SC09, spoken "zero" … "nine" rendered by espeak-ng.

Each synthetic speaker is an English espeak-ng voice (en-gb, en-us, Scottish, RP, Lancaster, West Midlands,
Caribbean) with one of espeak-ng's voice variants (m1…m8, f1…f5, klatt, whisper, croak and the named ones), a pitch
(20–80), a speed (120–220 words per minute) and a gain (0.3–1.0); a speaker says every digit once. Each rendering is
resampled to 16 kHz, cut to at most 1 s, placed at a random offset in a 1 s clip of low background noise (SNR 20–40
dB), like the 1 s clips of Speech Commands. Layout as SC09: DEST/<digit>/<speaker>_nohash_0.wav (16-bit PCM), and
DEST/validation_list.txt / testing_list.txt naming the clips of 10% / 10% of the speakers each (chosen by a hash of
the speaker name, as in Speech Commands, so adding speakers does not move the others). Every file is written under a
temporary name and renamed; a rerun skips clips that exist.
"""
from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mamba_bio_audio.audio import DIGITS, SAMPLE_RATE
from mamba_bio_audio.io import atomic_path

VOICES = ("en", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029")
CLIP = SAMPLE_RATE  # 1 s clips, as in Speech Commands


def espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise FileNotFoundError("espeak-ng is not installed: apt-get install espeak-ng (Debian/Ubuntu) or "
                                "brew install espeak-ng (macOS)")
    return path


def voice_variants(binary: str) -> list[str]:
    """The variant names espeak-ng knows (`espeak-ng --voices=variant`, file column !v/NAME)."""
    listing = subprocess.run([binary, "--voices=variant"], capture_output=True, text=True, check=True).stdout
    return sorted(line.split()[4].removeprefix("!v/") for line in listing.splitlines()[1:] if len(line.split()) >= 5)


def split_of(speaker: str) -> str:
    """valid / test / train for 10 / 10 / 80% of speakers, from a hash of the name (stable as speakers are added)."""
    bucket = int(hashlib.sha1(speaker.encode()).hexdigest(), 16) % 100
    return "valid" if bucket < 10 else "test" if bucket < 20 else "train"


def render(binary: str, word: str, voice: str, pitch: int, speed: int) -> np.ndarray:
    """espeak-ng's rendering of `word` as float32 at 16 kHz."""
    import soundfile
    import torch
    import torchaudio.functional

    with tempfile.TemporaryDirectory() as folder:
        wav = Path(folder) / "word.wav"
        subprocess.run([binary, "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(wav), word], check=True,
                       capture_output=True)
        data, rate = soundfile.read(str(wav), dtype="float32")
    return torchaudio.functional.resample(torch.from_numpy(data), rate, CLIP).numpy()


def spoken_digits(dest: str | Path, speakers: int = 300, seed: int = 0, workers: int = 4,
                  progress: bool = True) -> dict[str, int]:
    """Render `speakers` synthetic speakers × ten digits into DEST (layout in the module docstring); returns the
    number of clips per split."""
    import soundfile
    from tqdm import tqdm

    binary = espeak()
    variants = voice_variants(binary)
    rng = random.Random(seed)
    dest = Path(dest)
    plans = []
    for index in range(speakers):
        voice, variant = rng.choice(VOICES), rng.choice(variants)
        pitch, speed, gain = rng.randint(20, 80), rng.randint(120, 220), rng.uniform(0.3, 1.0)
        speaker = f"{index:04d}{voice.replace('-', '')}{variant.lower()}"
        for digit in DIGITS:
            plans.append((speaker, digit, f"{voice}+{variant}", pitch, speed, gain, rng.random(), rng.uniform(20, 40),
                          rng.getrandbits(32)))

    def make(plan) -> None:
        speaker, digit, voice, pitch, speed, gain, offset, snr_db, noise_seed = plan
        path = dest / digit / f"{speaker}_nohash_0.wav"
        if path.is_file():
            return
        word = render(binary, digit, voice, pitch, speed)[:CLIP]
        word = gain * word / max(float(np.abs(word).max()), 1e-6)
        clip = np.zeros(CLIP, dtype=np.float32)
        start = int(offset * (CLIP - len(word)))
        clip[start:start + len(word)] = word
        noise = np.random.default_rng(noise_seed).standard_normal(CLIP).astype(np.float32)
        clip += noise * float(np.sqrt(np.mean(word ** 2))) * 10 ** (-snr_db / 20)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            soundfile.write(str(tmp), np.clip(clip, -1, 1), CLIP, subtype="PCM_16", format="WAV")

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(tqdm(pool.map(make, plans), total=len(plans), desc="clips", unit="clip", disable=not progress))
    counts = {"train": 0, "valid": 0, "test": 0}
    lists = {"valid": [], "test": []}
    for speaker, digit, *_ in plans:
        split = split_of(speaker)
        counts[split] += 1
        if split in lists:
            lists[split].append(f"{digit}/{speaker}_nohash_0.wav")
    for split, name in (("valid", "validation_list.txt"), ("test", "testing_list.txt")):
        with atomic_path(dest / name) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in sorted(lists[split])))
    return counts
