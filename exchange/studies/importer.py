"""Import what a patient's CD or USB stick holds: a folder, a ZIP file, or a DICOMDIR tree.

The medium is untrusted data. Files are only ever opened for reading and copied into the spool
(storage.spool_stream); nothing on it is executed (autorun.inf, viewer .exe) and nothing is
created from a name found on it, so a ZIP entry such as '../evil.dcm' cannot write anywhere.

A DICOMDIR (PS3.10 §8.6, PS3.3 Annex F) lists the instances of a File-set by Referenced File ID
(0004,1500). Those files are read first; every other file is still looked at, so an instance the
DICOMDIR forgot is not silently missed, and each file is ingested once. ISO 9660 media often show
the IDs in another case or with a ';1' version suffix, so IDs are matched case-insensitively.

Non-DICOM files are "skipped" (counted, not errors); DICOM files that cannot be stored and entries
refused for safety are "rejected" with a reason in the batch's errors.
"""

import logging
import os
import re
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from django.conf import settings
from django.db import transaction

from audit import record
from audit.models import Event, Outcome
from exchange.studies import storage
from exchange.studies.dicomfile import FailureReason
from exchange.studies.models import IngestBatch, IngestSource
from exchange.studies.services import IngestResult, Status, batch_count, batch_finish, batch_start, ingest_spool

log = logging.getLogger(__name__)

HEAD_LENGTH = 132  # 128-byte preamble + 'DICM' (PS3.10 §7.1)
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
# A DICOMDIR is an index, a few MB even for a full DVD; a bigger one is not worth parsing.
DICOMDIR_MAX_BYTES = 64 * 1024 * 1024
# Tiny entries compress extremely well when they are blank (an empty image, zero padding) and
# are harmless: the per-instance and total limits bound them. The ratio rule targets bombs.
RATIO_MIN_BYTES = 1024 * 1024
MAX_REPORTED_SKIPS = 1000


class ImportFailed(Exception):
    """The medium as a whole cannot be imported (corrupt ZIP, limits of the archive exceeded)."""

    def __init__(self, message: str, batch: IngestBatch | None = None):
        super().__init__(message)
        self.message = message
        self.batch = batch


@dataclass
class ImportSummary:
    batch: IngestBatch
    skipped: int = 0
    # Relative paths of skipped non-DICOM files (README, viewer.exe, ...), capped.
    skipped_items: list[str] = field(default_factory=list)
    # Things worth telling the operator that are not about one file (e.g. unreadable DICOMDIR).
    notes: list[str] = field(default_factory=list)


@dataclass
class _Item:
    name: str  # path inside the medium, '/'-separated, for reports only
    ref: object = None  # absolute Path (folder) or ZipInfo (ZIP)
    referenced: bool = False  # listed in a DICOMDIR: DICOM by declaration
    refused: tuple[FailureReason, str] | None = None


class _ReadError(Exception):
    """Reading the medium failed (bad sector, corrupt ZIP entry); only this item is lost."""


class _Budget:
    def __init__(self, remaining: int | None):
        self.remaining = remaining


class _Reader:
    """Reads an item from the medium, counting what is actually read and stopping at the limit:
    ZIP headers can lie about sizes, so the declared size is checked and the real one enforced.
    Errors of the medium become _ReadError, so they are not confused with errors of our storage."""

    def __init__(self, raw, limit: int):
        self._raw = raw
        self.limit = limit
        self.count = 0
        self._pending = b""

    def _read(self, n: int) -> bytes:
        try:
            data = self._raw.read(n)
        except Exception as exc:
            raise _ReadError(type(exc).__name__) from exc
        self.count += len(data)
        if self.count > self.limit:
            raise storage.TooLarge(f"more than {self.limit} bytes")
        return data

    def head(self) -> bytes:
        self._pending = self._read(HEAD_LENGTH)
        return self._pending

    def read(self, n: int = -1) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        return self._read(n if n and n > 0 else storage.CHUNK)


def _key(name: str) -> str:
    """Case-insensitive form of a path on the medium; ISO 9660 adds ';1' and a trailing dot."""
    parts = []
    for part in name.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        part = re.sub(r";\d*$", "", part).rstrip(".").lower()
        parts.append(part)
    return "/".join(parts)


def _is_dicomdir(name: str) -> bool:
    return _key(name).rsplit("/", 1)[-1] == "dicomdir"


def _referenced_ids(path: str) -> list[list[str]]:
    """Referenced File IDs of a DICOMDIR, each as its path components (PS3.3 F.3.2.2)."""
    ds = pydicom.dcmread(path, defer_size=4096)
    out = []
    for rec in ds.get("DirectoryRecordSequence") or []:
        fid = rec.get("ReferencedFileID")
        if not fid:
            continue
        parts = [str(p).strip() for p in (fid if isinstance(fid, pydicom.multival.MultiValue) else [fid])]
        # A component may not climb or be absolute (PS3.10 §8.2 allows only 1-8 character names).
        if not parts or any(p in ("", ".", "..") or "/" in p or "\\" in p or ":" in p for p in parts):
            continue
        out.append(parts)
    return out


def _order(items: list[_Item], dicomdirs: dict[str, list[list[str]]]) -> list[_Item]:
    """Files referenced by the DICOMDIRs first (in their order), then every other file once."""
    by_key = {_key(it.name): it for it in items}
    first: list[_Item] = []
    seen: set[str] = set()
    for dicomdir_name, ids in dicomdirs.items():
        base = _key(dicomdir_name).rpartition("/")[0]
        for parts in ids:
            key = _key("/".join([base, *parts]) if base else "/".join(parts))
            if key in seen:
                continue
            seen.add(key)
            item = by_key.get(key)
            if item is None:
                first.append(_Item(name="/".join(parts), refused=(
                    FailureReason.PROCESSING_FAILURE, "listed in the DICOMDIR but not found on the medium")))
            else:
                item.referenced = True
                first.append(item)
    taken = {id(it) for it in first}
    return first + [it for it in items if id(it) not in taken]


def _work(items: list[_Item], dicomdirs: dict[str, list[list[str]]]) -> list[_Item]:
    # The DICOMDIR is the File-set's index, not an instance: it is never ingested.
    return [it for it in _order(items, dicomdirs) if not (it.refused is None and _is_dicomdir(it.name))]


def _folder_items(root: Path) -> list[_Item]:
    real_root = os.path.realpath(root)
    items: list[_Item] = []
    seen_real: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):  # followlinks=False: a link is not a way out
        dirnames.sort()
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                rel = os.path.relpath(os.path.join(dirpath, d), root).replace(os.sep, "/")
                items.append(_Item(rel, refused=(FailureReason.CANNOT_UNDERSTAND, "symbolic link to a folder; not followed")))
        for f in sorted(filenames):
            full = os.path.join(dirpath, f)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            real = os.path.realpath(full)
            if real != real_root and not real.startswith(real_root + os.sep):
                items.append(_Item(rel, refused=(
                    FailureReason.CANNOT_UNDERSTAND, "symbolic link points outside the imported folder; not followed")))
                continue
            try:
                mode = os.stat(real).st_mode
            except OSError:
                items.append(_Item(rel, refused=(FailureReason.CANNOT_UNDERSTAND, "cannot be read from the medium")))
                continue
            if not stat.S_ISREG(mode):  # a FIFO or device would block or never end
                items.append(_Item(rel, refused=(FailureReason.CANNOT_UNDERSTAND, "not a regular file")))
                continue
            if real in seen_real:  # a link to a file that is also in the folder: read it once
                continue
            seen_real.add(real)
            items.append(_Item(rel, ref=Path(real)))
    return items


def _unsafe_name(name: str) -> bool:
    n = name.replace("\\", "/")
    return n.startswith("/") or bool(re.match(r"^[A-Za-z]:", n)) or ".." in n.split("/") or "\0" in n


def _zip_items(zf: zipfile.ZipFile) -> list[_Item]:
    infos = zf.infolist()
    if len(infos) > settings.EXCHANGE_ZIP_MAX_ENTRIES:
        raise ImportFailed(f"the ZIP archive has {len(infos)} entries, more than the limit of {settings.EXCHANGE_ZIP_MAX_ENTRIES}")
    declared = sum(i.file_size for i in infos)
    if declared > settings.EXCHANGE_ZIP_MAX_TOTAL_BYTES:
        raise ImportFailed(
            f"the ZIP archive would unpack to {declared} bytes, more than the limit of {settings.EXCHANGE_ZIP_MAX_TOTAL_BYTES}")
    max_instance = settings.EXCHANGE_MAX_INSTANCE_BYTES
    ratio = settings.EXCHANGE_ZIP_MAX_RATIO
    items = []
    for info in infos:
        if info.is_dir():
            continue
        name = info.filename.replace("\\", "/")
        if _unsafe_name(info.filename):
            refused = (FailureReason.CANNOT_UNDERSTAND, "entry name is absolute or contains '..'; not read")
        elif info.flag_bits & 0x1:  # general purpose bit 0: encrypted (APPNOTE 4.4.4)
            refused = (FailureReason.CANNOT_UNDERSTAND, "encrypted ZIP entry; password-protected files are not read")
        elif info.file_size > max_instance:
            refused = (FailureReason.OUT_OF_RESOURCES, f"larger than the per-instance limit of {max_instance} bytes; not read")
        elif info.file_size > RATIO_MIN_BYTES and info.file_size > ratio * info.compress_size:
            refused = (FailureReason.OUT_OF_RESOURCES, f"compression ratio above {ratio}:1 (possible ZIP bomb); not read")
        else:
            refused = None
        items.append(_Item(name, ref=info, refused=refused))
    return items


def _refuse(batch, item_name: str, reason: FailureReason, message: str) -> None:
    batch_count(batch, IngestResult(Status.REJECTED, reason=reason, message=message), item=item_name)


def _process(item: _Item, opener, limit: int, *, hospital, actor, batch, summary, budget: _Budget | None) -> None:
    """Read one item: skip it if it is not DICOM, else spool and ingest it."""
    if budget is not None and budget.remaining is not None:
        if budget.remaining <= 0:
            _refuse(batch, item.name, FailureReason.OUT_OF_RESOURCES,
                    f"archive exceeds the total size limit of {settings.EXCHANGE_ZIP_MAX_TOTAL_BYTES} bytes; not read")
            return
        by_budget = budget.remaining < limit
        limit = min(limit, budget.remaining)
    else:
        by_budget = False
    reader = None
    try:
        try:
            raw = opener()
        except Exception as exc:
            raise _ReadError(type(exc).__name__) from exc
        with raw:
            reader = _Reader(raw, limit)
            head = reader.head()
            lower = item.name.lower()
            is_dicom = item.referenced or head[128:132] == b"DICM"
            if not is_dicom and (head[:4] in ZIP_MAGIC or lower.endswith(".zip")):
                _refuse(batch, item.name, FailureReason.CANNOT_UNDERSTAND,
                        "ZIP archive inside the import is not opened; import it on its own")
                return
            if not is_dicom and not lower.endswith(".dcm"):
                summary.skipped += 1
                if len(summary.skipped_items) < MAX_REPORTED_SKIPS:
                    summary.skipped_items.append(item.name)
                return
            spool = storage.spool_stream(reader, max_bytes=limit)
    except storage.TooLarge:
        message = (f"archive exceeds the total size limit of {settings.EXCHANGE_ZIP_MAX_TOTAL_BYTES} bytes; not read"
                   if by_budget else f"larger than the per-instance limit of {limit} bytes; not read")
        _refuse(batch, item.name, FailureReason.OUT_OF_RESOURCES, message)
        return
    except _ReadError as exc:
        what = "corrupt ZIP entry or unsupported compression" if isinstance(item.ref, zipfile.ZipInfo) else "cannot be read from the medium"
        _refuse(batch, item.name, FailureReason.CANNOT_UNDERSTAND, f"{what} ({exc})")
        return
    finally:
        if budget is not None and budget.remaining is not None and reader is not None:
            budget.remaining -= reader.count
    result = ingest_spool(spool, hospital=hospital, actor=actor, source=IngestSource.IMPORT, batch=batch)
    batch_count(batch, result, item=item.name)


def _read_dicomdirs(items, read_to_path, notes) -> dict[str, list[list[str]]]:
    found = {}
    for item in items:
        if item.refused is None and _is_dicomdir(item.name):
            try:
                found[item.name] = read_to_path(item)
            except Exception as exc:  # a broken index must not stop the import: every file is scanned anyway
                notes.append(f"DICOMDIR '{item.name}' cannot be read ({type(exc).__name__}); files were found by scanning")
                found[item.name] = []
    return found


def _import_folder(root: Path, *, hospital, actor, batch, summary, progress) -> None:
    items = _folder_items(root)
    dicomdirs = _read_dicomdirs(items, lambda it: _referenced_ids(str(it.ref)), summary.notes)
    work = _work(items, dicomdirs)
    limit = settings.EXCHANGE_MAX_INSTANCE_BYTES
    for done, item in enumerate(work, start=1):
        if item.refused:
            _refuse(batch, item.name, *item.refused)
        else:
            _process(item, lambda: open(item.ref, "rb"), limit, hospital=hospital, actor=actor, batch=batch,
                     summary=summary, budget=None)
        if progress:
            progress(done, len(work))


def _import_zip(path: Path, *, hospital, actor, batch, summary, progress) -> None:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, ValueError) as exc:
        raise ImportFailed(f"not a readable ZIP archive ({exc})") from None
    with zf:
        items = _zip_items(zf)
        budget = _Budget(settings.EXCHANGE_ZIP_MAX_TOTAL_BYTES)

        def dicomdir_ids(item: _Item) -> list[list[str]]:
            # Spooled to disk, never kept in memory nor extracted under its own name.
            with zf.open(item.ref) as raw:
                reader = _Reader(raw, min(DICOMDIR_MAX_BYTES, budget.remaining))
                try:
                    spool = storage.spool_stream(reader, max_bytes=reader.limit)
                finally:
                    budget.remaining -= reader.count
            try:
                return _referenced_ids(str(spool.path))
            finally:
                spool.discard()

        dicomdirs = _read_dicomdirs(items, dicomdir_ids, summary.notes)
        work = _work(items, dicomdirs)
        limit = settings.EXCHANGE_MAX_INSTANCE_BYTES
        for done, item in enumerate(work, start=1):
            if item.refused:
                _refuse(batch, item.name, *item.refused)
            else:
                _process(item, lambda: zf.open(item.ref), limit, hospital=hospital, actor=actor, batch=batch,
                         summary=summary, budget=budget)
            if progress:
                progress(done, len(work))


def import_path(
    path, *, hospital, actor=None, progress: Callable[[int, int | None], None] | None = None
) -> ImportSummary:
    """Import a folder (walked recursively, DICOMDIR honoured) or a ZIP archive into `hospital`.

    Per-file problems are reported in the batch and do not stop the import; ImportFailed means
    the medium as a whole could not be read (the batch is then marked failed)."""
    path = Path(path)
    if not path.exists():
        raise ImportFailed(f"no such file or folder: {path}")
    if not path.is_dir() and not (path.suffix.lower() == ".zip" or zipfile.is_zipfile(path)):
        raise ImportFailed("not a folder or a ZIP archive")
    label = os.path.basename(os.path.normpath(path))
    batch = batch_start(hospital=hospital, actor=actor, source=IngestSource.IMPORT, label=label)
    summary = ImportSummary(batch=batch)
    run = _import_folder if path.is_dir() else _import_zip
    try:
        run(path, hospital=hospital, actor=actor, batch=batch, summary=summary, progress=progress)
    except BaseException as exc:
        batch_finish(batch, failed=True)
        with transaction.atomic():
            record(Event.IMPORT, actor, Outcome.SERIOUS_FAILURE, details={
                "batch": batch.pk, "stored": batch.stored, "duplicates": batch.duplicates, "rejected": batch.rejected,
                "skipped": summary.skipped, "failure": exc.message if isinstance(exc, ImportFailed) else type(exc).__name__,
            })
        if isinstance(exc, ImportFailed):
            exc.batch = batch
        raise
    batch_finish(batch)
    with transaction.atomic():
        record(Event.IMPORT, actor, Outcome.MINOR_FAILURE if batch.rejected else Outcome.SUCCESS, details={
            "batch": batch.pk, "stored": batch.stored, "duplicates": batch.duplicates, "rejected": batch.rejected,
            "skipped": summary.skipped,
        })
    return summary
