"""`mba data youtubemix`: the YouTubeMix piano dataset (about 4 h of solo piano, used by SaShiMi and the Mamba paper)
laid out for `mba audio train --audio-dir`.

The data is distributed on the Hugging Face hub as the gated dataset `krandiash/youtubemix`, so it cannot be fetched
anonymously. Steps:
  1. accept the dataset's terms at https://huggingface.co/datasets/krandiash/youtubemix (logged in);
  2. `pip install huggingface_hub && huggingface-cli login` (a read token);
  3. `huggingface-cli download krandiash/youtubemix --repo-type dataset --local-dir youtubemix-hf`;
  4. `mba data youtubemix --source youtubemix-hf --dest data` (a folder, or a .zip / .tar[.gz] archive of it).
Every audio file found (WAV/FLAC/OGG, at any depth) is checked with soundfile and copied into DEST/youtubemix under its
path with '/' turned into '__' (sorted order = the 88/6/6% split order), through DEST/youtubemix.partial, so
DEST/youtubemix is absent or complete. An unreadable file stops the recipe with its name.
"""
from __future__ import annotations

import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

from mamba_bio_audio.audio import AUDIO_SUFFIXES
from mamba_bio_audio.errors import InputError


def _unpack(source: Path, into: Path) -> Path:
    """The folder holding `source`'s files: `source` itself, or the archive unpacked into `into` (its single top
    folder if it has one; unsafe member paths refused)."""
    if source.is_dir():
        return source
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such folder or archive")
    try:
        if zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as archive:
                for name in archive.namelist():
                    if Path(name).is_absolute() or ".." in Path(name).parts:
                        raise InputError(f"{source}: unsafe member path {name!r}")
                archive.extractall(into)
        else:
            with tarfile.open(source, "r:*") as archive:
                archive.extractall(into, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        raise InputError(f"{source}: not a readable zip or tar archive ({error})") from None
    entries = list(into.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else into  # an archive of one folder: its inside


def youtubemix(source: str | Path, dest: str | Path) -> tuple[Path, int, float]:
    """Copy the audio files of `source` (folder or archive) into DEST/youtubemix; returns the folder, the number of
    files and their total duration in hours."""
    import soundfile

    source, dest = Path(source), Path(dest)
    target = dest / "youtubemix"
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=dest if dest.is_dir() else None) as scratch:
        root = _unpack(source, Path(scratch))
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise InputError(f"{source}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
        seconds = 0.0
        partial.mkdir(parents=True)
        try:
            for path in files:
                try:
                    info = soundfile.info(str(path))
                except (soundfile.LibsndfileError, RuntimeError) as error:
                    raise InputError(f"{path}: not a readable audio file ({error})") from None
                if info.frames == 0:
                    raise InputError(f"{path}: no audio samples")
                seconds += info.frames / info.samplerate
                shutil.copyfile(path, partial / "__".join(path.relative_to(root).parts))
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target, len(files), seconds / 3600
