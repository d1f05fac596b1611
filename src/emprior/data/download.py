"""Downloads verified by checksum, and file digests.

The bytes go to a temporary file next to the destination, hashed on the fly, and are renamed onto it
only once the digests match, so an interrupted or corrupted download never leaves a file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from emprior.core.artifacts import file_mode
from emprior.core.digest import file_digest
from emprior.core.errors import DataError

_CHUNK = 1 << 20


def _expected_digests(sha256: str | None, md5: str | None) -> dict[str, str]:
    expected = {}
    for name, value in (("sha256", sha256), ("md5", md5)):
        if value is not None:
            if not isinstance(value, str) or not value:
                raise ValueError(f"download: {name} must be a hex string, got {value!r}")
            expected[name] = value.lower()
    return expected


def _check_digests(path: Path, expected: dict[str, str]) -> None:
    for algorithm, want in expected.items():
        got = file_digest(path, algorithm)
        if got != want:
            raise DataError(f"{path}: {algorithm} checksum mismatch (expected {want}, got {got}); "
                            f"the file is corrupt or not the expected one: delete it and download again")


def download(url: str, dest: str | Path, sha256: str | None = None, md5: str | None = None,
             timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` with urllib and verify its checksum(s); return ``dest``.

    An existing ``dest`` whose checksums match (or for which none is given) is kept without
    downloading again.
    """
    dest = Path(dest)
    expected = _expected_digests(sha256, md5)
    if dest.is_file():
        with contextlib.suppress(DataError):
            _check_digests(dest, expected)
            return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.fchmod(fd, file_mode())  # the umask's mode, not mkstemp's 0600: the group may share the weights
    tmp = Path(tmp_name)
    hashes = {name: hashlib.new(name) for name in expected}
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    for h in hashes.values():
                        h.update(chunk)
                out.flush()
                os.fsync(out.fileno())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            raise DataError(f"download of {url} to {dest} failed: {str(reason).splitlines()[0]}") from None
        for name, h in hashes.items():
            if h.hexdigest() != expected[name]:
                raise DataError(f"download of {url} to {dest}: {name} checksum mismatch "
                                f"(expected {expected[name]}, got {h.hexdigest()})")
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dest
