"""Import a patient's CD, USB stick or ZIP file into a hospital's studies."""

from collections import Counter
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from exchange.studies.importer import ImportFailed, import_path
from hospitals.models import Hospital

BAR_WIDTH = 30
# Without a terminal (cron, log files) a redrawn bar would be noise: one line per this many files.
LINE_EVERY = 100


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit} ({n} bytes)"
        size /= 1024
    return f"{n} bytes"


class Command(BaseCommand):
    help = "Import DICOM files from a folder, a DICOMDIR tree or a ZIP file (a patient's CD or USB stick)."

    def add_arguments(self, parser):
        parser.add_argument("path", help="folder (e.g. the mounted CD) or ZIP file")
        parser.add_argument("--hospital", required=True, help="code of the hospital that receives the studies")
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handle(self, *args, path, hospital, quiet, **options):
        hospital_obj = Hospital.objects.filter(code=hospital.strip().upper()).first()
        if hospital_obj is None:
            raise CommandError(f"unknown hospital {hospital!r} (see the hospital codes in the admin)")
        if not Path(path).exists():
            raise CommandError(f"no such file or folder: {path}")
        bar = not quiet and self.stderr.isatty()
        progress = None if quiet else (self._bar if bar else self._lines)
        try:
            summary = import_path(path, hospital=hospital_obj, actor=None, progress=progress)
        except ImportFailed as exc:
            if bar:
                self.stderr.write("")
            batch = f" (batch {exc.batch.pk} marked failed)" if exc.batch else ""
            raise CommandError(f"import failed: {exc.message}{batch}") from None
        if bar:
            self.stderr.write("")  # leave the finished bar on its own line
        self._summary(summary, hospital_obj)

    def _bar(self, done: int, total: int | None) -> None:
        if total:
            filled = BAR_WIDTH * done // total
            text = f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total} files"
        else:
            text = f"\r{done} files"
        self.stderr.write(text, style_func=lambda s: s, ending="")
        self.stderr.flush()

    def _lines(self, done: int, total: int | None) -> None:
        if done % LINE_EVERY == 0 or done == total:
            self.stderr.write(f"{done}/{total if total is not None else '?'} files", style_func=lambda s: s)

    def _summary(self, summary, hospital) -> None:
        batch = summary.batch
        out = self.stdout
        out.write(f"import of {batch.label!r} into {hospital.code} (batch {batch.pk})")
        out.write(f"  imported: {batch.stored}")
        out.write(f"  duplicates: {batch.duplicates}")
        out.write(f"  rejected: {batch.rejected}")
        reasons = Counter(e.get("reason", "") for e in batch.errors)
        for reason, count in reasons.most_common():
            out.write(f"    {count} × {reason}")
        if batch.rejected > len(batch.errors):
            out.write(f"    ({batch.rejected - len(batch.errors)} more not itemised)")
        out.write(f"  skipped non-DICOM: {summary.skipped}")
        out.write(f"  bytes stored: {_bytes(batch.bytes_stored)}")
        for note in summary.notes:
            out.write(f"  note: {note}")
