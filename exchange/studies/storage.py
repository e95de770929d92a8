"""Content-addressed storage of DICOM Part 10 files on disk.

A file's key is the SHA-256 of its bytes with the 128-byte preamble zeroed (PS3.10 §7.1: the
preamble is free for application use; zeroing it removes a place to hide executable content and
makes identical instances identical files). Files are written to a temporary file while the
bytes arrive and moved into place with an atomic rename, so a reader never sees half a file.
"""

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

PREAMBLE_LENGTH = 128
CHUNK = 1024 * 1024


class TooLarge(Exception):
    pass


def root() -> Path:
    return Path(settings.EXCHANGE_STORAGE_DIR)


def path_for(key: str) -> Path:
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise ValueError("not a storage key")
    return root() / key[:2] / key[2:4] / f"{key}.dcm"


# Folders this process has already made: saves two syscalls per instance. Only an optimisation;
# another process making or removing folders changes nothing here (mkdir is idempotent).
_made: set[Path] = set()


def _ensure_dir(d: Path) -> Path:
    if d not in _made:
        d.mkdir(parents=True, exist_ok=True)
        _made.add(d)
    return d


def _tmp_dir() -> Path:
    return _ensure_dir(root() / "tmp")


@dataclass
class Spool:
    """A received file in the temporary area, with its key and size."""

    path: Path
    key: str
    size: int

    def discard(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class SpoolWriter:
    """Writes a stream of chunks to a temporary file, zeroing the preamble and hashing as it goes."""

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = max_bytes if max_bytes is not None else settings.EXCHANGE_MAX_INSTANCE_BYTES
        fd, name = tempfile.mkstemp(dir=_tmp_dir(), suffix=".part")
        self._file = os.fdopen(fd, "wb")
        self.path = Path(name)
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        if self.size < PREAMBLE_LENGTH:
            n = min(PREAMBLE_LENGTH - self.size, len(chunk))
            chunk = b"\0" * n + chunk[n:]
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise TooLarge(f"instance larger than {self.max_bytes} bytes")
        self._hash.update(chunk)
        self._file.write(chunk)

    def close(self) -> Spool:
        self._file.close()
        return Spool(path=self.path, key=self._hash.hexdigest(), size=self.size)

    def abort(self) -> None:
        self._file.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def spool_stream(fileobj, max_bytes: int | None = None) -> Spool:
    """Copy a readable binary stream into the temporary area."""
    writer = SpoolWriter(max_bytes)
    try:
        while chunk := fileobj.read(CHUNK):
            writer.write(chunk)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def commit(spool: Spool) -> bool:
    """Move a spooled file to its content address. Returns True if this call created the file,
    False if identical content was already stored (the spool is then discarded)."""
    final = path_for(spool.key)
    if final.exists():
        spool.discard()
        return False
    _ensure_dir(final.parent)
    os.chmod(spool.path, 0o640)
    try:
        os.replace(spool.path, final)
    except FileNotFoundError:
        # The folder was removed behind our back (e.g. tests emptying storage): make it again.
        _made.discard(final.parent)
        _ensure_dir(final.parent)
        os.replace(spool.path, final)
    return True


def remove(key: str) -> None:
    try:
        os.unlink(path_for(key))
    except FileNotFoundError:
        pass


def open_key(key: str):
    return open(path_for(key), "rb")
