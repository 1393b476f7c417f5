"""`mba data piano`: an offline stand-in for YouTubeMix, solo piano rendered from the music21 corpus.

Every score of the chosen composers in music21's corpus (PyPI `music21`: Bach chorales, Beethoven, Mozart and Haydn
string quartets, Joplin, Handel, ...) has each part's instrument set to an acoustic grand piano, is written as MIDI
by music21 and rendered by FluidSynth (Debian `fluidsynth`) with a General MIDI soundfont (Debian
`fluid-soundfont-gm`) at 16 kHz, then downmixed to mono and peak-normalised. Files are named
DEST/piano/NNNN_composer_piece.wav with NNNN from a seeded shuffle, so that the sorted order used by the 88/6/6% split
of `mba audio train --audio-dir` mixes composers. Each file is written atomically; a rerun skips existing files.
"""
from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from mamba_bio_audio.audio import SAMPLE_RATE
from mamba_bio_audio.errors import InputError
from mamba_bio_audio.io import atomic_path

COMPOSERS = ("bach", "beethoven", "mozart", "haydn", "joplin", "handel", "chopin", "schubert", "corelli")
SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf2/default-GM.sf2")


def tools(soundfont: str | None) -> tuple[str, Path]:
    """(fluidsynth binary, soundfont), or an error with the install hint."""
    binary = shutil.which("fluidsynth")
    if binary is None:
        raise FileNotFoundError("fluidsynth is not installed: apt-get install fluidsynth fluid-soundfont-gm")
    candidates = [soundfont] if soundfont else list(SOUNDFONTS)
    for candidate in candidates:
        if Path(candidate).is_file():
            return binary, Path(candidate)
    raise FileNotFoundError(f"no General MIDI soundfont at {', '.join(candidates)}: apt-get install "
                            "fluid-soundfont-gm, or give --soundfont FILE.sf2")


def corpus_pieces(composers: tuple[str, ...] = COMPOSERS) -> list[tuple[str, Path]]:
    """(composer, score path) of every corpus score of `composers`, in a fixed order."""
    try:
        from music21 import corpus
    except ImportError:
        raise FileNotFoundError("the piano recipe needs music21: pip install music21") from None
    return [(composer, Path(path)) for composer in composers for path in sorted(corpus.getComposer(composer))]


def render(score: Path, binary: str, soundfont: Path) -> "numpy.ndarray":  # noqa: F821
    """The score played on piano: mono float32 at 16 kHz, peak 0.9."""
    import numpy as np
    import soundfile
    from music21 import converter, instrument

    parsed = converter.parse(str(score))
    for part in parsed.parts:
        for old in part.recurse().getElementsByClass(instrument.Instrument):
            old.activeSite.remove(old)
        part.insert(0, instrument.Piano())
    with tempfile.TemporaryDirectory() as folder:
        midi, wav = Path(folder) / "score.mid", Path(folder) / "score.wav"
        parsed.write("midi", fp=str(midi))
        subprocess.run([binary, "-ni", "-q", "-F", str(wav), "-r", str(SAMPLE_RATE), str(soundfont), str(midi)],
                       check=True, capture_output=True)
        data, rate = soundfile.read(str(wav), dtype="float32", always_2d=True)
    if rate != SAMPLE_RATE:
        raise InputError(f"{score}: fluidsynth wrote {rate} Hz instead of {SAMPLE_RATE}")
    mono = data.mean(axis=1)
    peak = float(np.abs(mono).max())
    if peak == 0:
        raise InputError(f"{score}: rendered silence")
    return (0.9 * mono / peak).astype(np.float32)


def piano(dest: str | Path, pieces: int | None = None, soundfont: str | None = None, seed: int = 0,
          workers: int = 4, progress: bool = True) -> tuple[Path, int, float, list[str]]:
    """Render the corpus (or its first `pieces` after the seeded shuffle) into DEST/piano; returns the folder, the
    number of files written, the hours of audio and the scores music21 could not read or play (each named with its
    reason; a few corpus scores have malformed repeats), which are left out."""
    from tqdm import tqdm

    binary, font = tools(soundfont)
    chosen = corpus_pieces()
    random.Random(seed).shuffle(chosen)
    chosen = chosen[:pieces] if pieces else chosen
    target = Path(dest) / "piano"
    target.mkdir(parents=True, exist_ok=True)

    jobs = [(target / f"{i:04d}_{composer}_{score.stem.replace('.', '-')}.wav", score, binary, font)
            for i, (composer, score) in enumerate(chosen)]
    with ProcessPoolExecutor(max(1, workers)) as pool:  # music21 keeps global state: one process per worker
        results = list(tqdm(pool.map(_render_file, jobs), total=len(jobs), desc="pieces", unit="piece",
                            disable=not progress))
    skipped = [reason for _, reason in results if reason]
    return target, len(results) - len(skipped), sum(seconds for seconds, _ in results) / 3600, skipped


def _render_file(job: tuple[Path, Path, str, Path]) -> tuple[float, str | None]:
    """Render one score to its WAV file unless it exists → (the file's duration in seconds, None), or (0, why) for a
    score music21 cannot read or turn into MIDI (nothing is written then)."""
    import soundfile
    from music21.exceptions21 import Music21Exception

    path, score, binary, font = job
    if not path.is_file():
        try:
            wave = render(score, binary, font)
        except Music21Exception as error:
            return 0.0, f"{score}: {type(error).__name__}: {error}"
        with atomic_path(path) as tmp:
            soundfile.write(str(tmp), wave, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return soundfile.info(str(path)).duration, None
