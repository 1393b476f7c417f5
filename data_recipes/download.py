"""Resumable, verified HTTP downloads for the data recipes."""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from mamba_bio_audio.errors import DownloadError, InputError


def download(url: str, dest: str | Path, *, checksum: tuple[str, str] | None = None, progress: bool = True,
             timeout: float = 60.0, block: int = 1 << 20) -> Path:
    """Download `url` to `dest` and return `dest`; an existing `dest` is kept as it is.

    Bytes go to DEST.part. A .part left by an interrupted run is resumed with an HTTP Range request (a server that
    ignores Range sends the whole file, which then replaces the .part). The finished .part must have the size the
    server announced (Content-Length / Content-Range) and, when `checksum` = (algorithm, hex digest) is given, e.g.
    ("sha256", ...) or ("md5", ...), that digest; only then is it
    renamed to `dest`, so `dest` never holds a partial file. Errors name the URL and what differed: DownloadError
    for the server or the network (a broken connection keeps the .part to resume from), InputError for a wrong
    checksum."""
    from tqdm import tqdm

    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # the .part is already complete (or longer than the file): start over
            part.unlink()
            return download(url, dest, checksum=checksum, progress=progress, timeout=timeout, block=block)
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise DownloadError(f"{url}: {error.reason}") from None
    with response:
        resumed = response.status == 206
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        broken = None
        with open(part, "ab" if resumed else "wb") as out, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
            try:
                while chunk := response.read(block):
                    out.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as error:  # a reset, a timeout, a short chunked body
                broken = error
    size = part.stat().st_size
    if broken is not None or (total is not None and size != total):
        of = f" of {total:,}" if total is not None else ""
        why = f" (the connection broke: {broken!r})" if broken is not None else ""
        raise DownloadError(f"{url}: got {size:,}{of} bytes{why}; run again to resume from {part}")
    if checksum is not None:
        algorithm, expected = checksum
        digest = hashlib.new(algorithm)
        with open(part, "rb") as handle:
            while chunk := handle.read(block):
                digest.update(chunk)
        if digest.hexdigest() != expected.lower():
            part.unlink()
            raise InputError(f"{url}: {algorithm} {digest.hexdigest()} does not match the expected {expected}; "
                             f"the download was removed")
    os.replace(part, dest)
    return dest
