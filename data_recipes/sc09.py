"""`mba data sc09`: the SC09 subset of Speech Commands v0.02 (Warden 2018), as used by WaveNet/SaShiMi/Mamba: the
utterances of "zero" … "nine" (1 s, 16 kHz), with the release's validation and testing lists.

The archive (2.4 GB) is downloaded resumably and checked against its SHA-256; the ten digit folders and the two lists
(restricted to the digits) are extracted into DEST/sc09.partial, then the folder is renamed to DEST/sc09, so DEST/sc09
is either absent or complete. Archive members with absolute paths or '..' are refused.
"""
from __future__ import annotations

import shutil
import tarfile
import zlib
from pathlib import Path

from mamba_bio_audio.audio import DIGITS
from mamba_bio_audio.errors import InputError

from .download import download

SPEECH_COMMANDS_URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
SPEECH_COMMANDS_SHA256 = "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58"
LISTS = ("validation_list.txt", "testing_list.txt")


def _member_path(name: str) -> Path | None:
    """The path inside DEST of an archive member we keep (a digit clip or a list), else None."""
    parts = Path(name.removeprefix("./")).parts
    if not parts or Path(name).is_absolute() or ".." in parts:
        return None
    if len(parts) == 1 and parts[0] in LISTS:
        return Path(parts[0])
    if len(parts) == 2 and parts[0] in DIGITS and parts[1].endswith(".wav"):
        return Path(*parts)
    return None


def extract_sc09(archive: str | Path, target: str | Path) -> dict[str, int]:
    """Extract the SC09 part of a Speech Commands archive into `target` (through target.partial); returns clips
    per digit. Errors name the archive."""
    archive, target = Path(archive), Path(target)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    counts = dict.fromkeys(DIGITS, 0)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                path = _member_path(member.name)
                if path is None or not member.isfile():
                    continue
                out = partial / path
                out.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as source, open(out, "wb") as sink:
                    shutil.copyfileobj(source, sink)
                if path.parent.name in counts:
                    counts[path.parent.name] += 1
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        shutil.rmtree(partial, ignore_errors=True)
        raise InputError(f"{archive}: not a readable Speech Commands archive ({error})") from None
    missing = [name for name in LISTS if not (partial / name).is_file()]
    empty = [digit for digit, n in counts.items() if n == 0]
    if missing or empty:
        shutil.rmtree(partial, ignore_errors=True)
        raise InputError(f"{archive}: not the Speech Commands layout (missing {', '.join(missing + empty)})")
    for name in LISTS:  # keep the digits' lines only
        lines = (partial / name).read_text().splitlines()
        (partial / name).write_text("".join(f"{line}\n" for line in lines if _member_path(line.strip())))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return counts


def sc09(dest: str | Path, url: str = SPEECH_COMMANDS_URL, sha256: str | None = SPEECH_COMMANDS_SHA256,
         remove_archive: bool = False, progress: bool = True) -> tuple[Path, dict[str, int]]:
    """Download (resumable, SHA-256 checked) and extract SC09 into DEST/sc09; returns that folder and the clips per
    digit. A finished DEST/sc09 is kept as it is."""
    dest = Path(dest)
    target = dest / "sc09"
    if (target / LISTS[1]).is_file():
        return target, {d: len(list((target / d).glob("*.wav"))) for d in DIGITS}
    archive = download(url, dest / Path(url).name, checksum=("sha256", sha256) if sha256 else None,
                       progress=progress)
    counts = extract_sc09(archive, target)
    if remove_archive:
        archive.unlink()
    return target, counts
