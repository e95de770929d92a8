"""Background ingest. Tasks take ids, call a service, and can run twice: a second import of
the same upload finds every instance already stored and counts duplicates."""

import logging
import os
import uuid
from pathlib import Path

from celery import shared_task
from django.conf import settings
from django.contrib.auth import get_user_model

from exchange.studies.importer import ImportFailed, import_path
from hospitals.models import Hospital

log = logging.getLogger(__name__)


def uploads_dir() -> Path:
    d = Path(settings.EXCHANGE_STORAGE_DIR) / "uploads"
    d.mkdir(parents=True, exist_ok=True)
    return d


def upload_save(fileobj) -> str:
    """Stream an uploaded ZIP into the uploads area; returns its token (the file's name).
    The original file name is not kept: people name files after patients."""
    token = f"{uuid.uuid4().hex}.zip"
    with open(uploads_dir() / token, "wb") as out:
        for chunk in fileobj.chunks():
            out.write(chunk)
    return token


@shared_task(bind=True, acks_late=True, max_retries=3)
def import_upload_task(self, token: str, hospital_id: int, user_id: int | None) -> dict:
    path = uploads_dir() / os.path.basename(token)
    if not path.exists():
        return {"status": "gone"}  # already imported by an earlier run of this task
    hospital = Hospital.objects.get(pk=hospital_id)
    user = get_user_model().objects.filter(pk=user_id).first() if user_id else None
    try:
        summary = import_path(path, hospital=hospital, actor=user)
    except ImportFailed as exc:
        log.warning("upload import failed: %s", exc.message)
        path.unlink(missing_ok=True)
        return {"status": "failed", "reason": exc.message}
    path.unlink(missing_ok=True)
    b = summary.batch
    return {"status": "done", "batch": b.pk, "stored": b.stored, "duplicates": b.duplicates, "rejected": b.rejected}
