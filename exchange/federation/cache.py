"""Bounded on-disk cache of instances fetched from hospital archives (the retrieve proxy).

Layout under ``root()`` (EXCHANGE_PROXY_CACHE_DIR, default ``<storage>/proxy-cache``):

    ab/abcdef….dcm   one Part 10 file per (source endpoint, SOPInstanceUID); the name is the
                     SHA-256 of both, so no UID (or anything about a patient) is in a path
    tmp/*.part       transfers in flight; renamed into place only when whole and verified
    .size            running total of entry bytes (an estimate, made exact at each eviction)
    .lock            flock(2) lock for the total and for eviction

Every worker shares it through the filesystem alone: there is no index in any process. A hit
touches the entry's mtime; eviction deletes the entries with the oldest mtime (least recently
used) until the total is at most 90 % of EXCHANGE_PROXY_CACHE_BYTES, so eviction scans run once
per ~10 % of turnover, not after every fill. A reader that opened an entry keeps reading it when
it is evicted (unlink keeps open files). Temporary files not written to for TEMP_STALE_SECONDS
belong to a crashed worker and are swept.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import time
from pathlib import Path

from django.conf import settings

# A transfer in flight writes its temporary file at least every endpoint timeout (≤ a few
# minutes); one untouched for an hour was left by a worker that died.
TEMP_STALE_SECONDS = 3600
LOW_WATER = 0.9


class TooLarge(Exception):
    pass


def root() -> Path:
    configured = getattr(settings, "EXCHANGE_PROXY_CACHE_DIR", "")
    return Path(configured) if configured else Path(settings.EXCHANGE_STORAGE_DIR) / "proxy-cache"


def limit() -> int:
    return int(getattr(settings, "EXCHANGE_PROXY_CACHE_BYTES", 10 * 1024**3))


def key_for(endpoint_id: int, sop_instance_uid: str) -> str:
    return hashlib.sha256(f"{int(endpoint_id)}\0{sop_instance_uid}".encode()).hexdigest()


def path_for(key: str) -> Path:
    return root() / key[:2] / f"{key}.dcm"


def tmp_dir() -> Path:
    d = root() / "tmp"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def lookup(endpoint_id: int, sop_instance_uid: str) -> Path | None:
    """The entry's path, touched as used, or None."""
    path = path_for(key_for(endpoint_id, sop_instance_uid))
    if not path.is_file():
        return None
    _touch(path)
    return path


def open_entry(endpoint_id: int, sop_instance_uid: str):
    """The entry opened for reading (still readable if evicted meanwhile), touched; or None."""
    path = path_for(key_for(endpoint_id, sop_instance_uid))
    try:
        fp = open(path, "rb")
    except FileNotFoundError:
        return None
    _touch(path)
    return fp


def contains(endpoint_id: int, sop_instance_uid: str) -> bool:
    """Whether the entry exists (without counting as a use)."""
    return path_for(key_for(endpoint_id, sop_instance_uid)).is_file()


@contextlib.contextmanager
def _locked():
    base = root()
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "a+b") as fp:
        fcntl.flock(fp, fcntl.LOCK_EX)
        try:
            yield base
        finally:
            fcntl.flock(fp, fcntl.LOCK_UN)


def _read_total(base: Path) -> int | None:
    try:
        return int((base / ".size").read_text() or "x")
    except (FileNotFoundError, ValueError):
        return None


def _write_total(base: Path, total: int) -> None:
    fd, name = tempfile.mkstemp(dir=base, prefix=".size.")
    with os.fdopen(fd, "w") as fp:
        fp.write(str(max(total, 0)))
    os.replace(name, base / ".size")


def _entries(base: Path):
    """(mtime, size, path) of every entry."""
    out = []
    for sub in os.scandir(base):
        if not sub.is_dir() or len(sub.name) != 2:
            continue
        for entry in os.scandir(sub.path):
            if entry.name.endswith(".dcm"):
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat()
                    out.append((st.st_mtime, st.st_size, Path(entry.path)))
    return out


def usage() -> tuple[int, int]:
    """(entries, bytes) as on disk now."""
    base = root()
    if not base.is_dir():
        return 0, 0
    entries = _entries(base)
    return len(entries), sum(size for _, size, _ in entries)


def evict(keep: Path | None = None, target: int | None = None) -> int:
    """Delete least recently used entries until the total is at most ``target`` (default 90 % of
    the limit), never ``keep`` (the entry just filled). Also sweeps stale temporary files.
    Returns the number of entries deleted."""
    sweep_temp()
    with _locked() as base:
        entries = sorted(_entries(base), key=lambda e: e[0])
        total = sum(size for _, size, _ in entries)
        goal = int(limit() * LOW_WATER) if target is None else target
        deleted = 0
        for _, size, path in entries:
            if total <= goal:
                break
            if keep is not None and path == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                deleted += 1
            total -= size
        _write_total(base, total)
    return deleted


def _account(delta: int, keep: Path) -> None:
    """Add a fill to the running total; evict when it passes the limit."""
    with _locked() as base:
        total = _read_total(base)
        if total is not None:
            total += delta
            _write_total(base, total)
    if total is None or total > limit():
        evict(keep=keep)


def sweep_temp(max_age: float = TEMP_STALE_SECONDS) -> int:
    """Remove temporary files of transfers that stopped (a crashed worker's)."""
    d = root() / "tmp"
    if not d.is_dir():
        return 0
    removed, cutoff = 0, time.time() - max_age
    for entry in os.scandir(d):
        with contextlib.suppress(FileNotFoundError):
            if entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
    return removed


class TempEntry:
    """A transfer in flight: chunks go to a temporary file in the cache; ``commit`` moves it into
    place atomically, ``abort`` removes it. Nothing else ever sees a partial file."""

    def __init__(self, endpoint_id: int, sop_instance_uid: str, max_bytes: int | None = None):
        self.key = key_for(endpoint_id, sop_instance_uid)
        self.max_bytes = max_bytes if max_bytes is not None else settings.EXCHANGE_MAX_INSTANCE_BYTES
        fd, name = tempfile.mkstemp(dir=tmp_dir(), suffix=".part")
        self._file = os.fdopen(fd, "wb")
        self.path = Path(name)
        self.size = 0
        self.done = False

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise TooLarge(f"instance larger than {self.max_bytes} bytes")
        self._file.write(chunk)

    def close_file(self) -> None:
        if not self._file.closed:
            self._file.close()

    def commit(self) -> Path:
        """Move the whole, verified file into place and account for it (may evict others)."""
        self.close_file()
        final = path_for(self.key)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            replaced = final.stat().st_size
        except FileNotFoundError:
            replaced = 0
        os.chmod(self.path, 0o640)
        os.replace(self.path, final)
        self.done = True
        _account(self.size - replaced, keep=final)
        return final

    def abort(self) -> None:
        if self.done:
            return
        self.done = True
        self.close_file()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def clear() -> int:
    """Delete every entry (operators; benchmarks' cold runs). Transfers in flight are unaffected."""
    return evict(target=0)
