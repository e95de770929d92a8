"""Web upload of a CD image → import task, through a real Celery worker and broker when
CELERY_BROKER_URL is set (CI: Redis), eagerly in-process otherwise (the embedded demo)."""

import contextlib
import io
import os
import time
import zipfile

import pytest
from django.test import Client

from exchange import celery_app
from exchange.studies.models import BatchStatus, IngestBatch, Instance
from exchange.studies.tasks import import_upload_task, uploads_dir
from tests.conftest import IN_CI, PASSWORD, require
from tests.dicom import ct_dataset, to_bytes


def zip_of(*datasets) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, ds in enumerate(datasets):
            zf.writestr(f"DICOM/IM{n:04d}", to_bytes(ds))
        zf.writestr("README.TXT", "viewer software")
    return buf.getvalue()


@contextlib.contextmanager
def worker():
    broker = os.environ.get("CELERY_BROKER_URL")
    require("Celery broker", bool(broker) or not IN_CI, "CELERY_BROKER_URL is not set")
    if not broker:
        yield "eager"
        return
    from celery.contrib.testing.worker import start_worker

    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        yield "worker"


@pytest.mark.django_db(transaction=True)
def test_admin_uploads_a_zip_and_a_worker_imports_it(admin_a):
    client = Client()
    client.post("/accounts/login/", {"username": admin_a.username, "password": PASSWORD})
    datasets = [ct_dataset(instance_number=n) for n in (1, 2)]
    upload = io.BytesIO(zip_of(*datasets))
    upload.name = "cd.zip"
    with worker() as mode:
        assert celery_app.conf.task_always_eager is (mode == "eager")
        response = client.post("/hospital/ingest/", {"archive": upload})
        assert response.status_code == 302
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            batch = IngestBatch.objects.filter(hospital=admin_a.profile.hospital, status=BatchStatus.DONE).first()
            if batch is not None:
                break
            time.sleep(0.2)
    assert batch is not None, "the import task did not run"
    assert (batch.stored, batch.rejected) == (2, 0)
    assert batch.actor == admin_a
    assert Instance.objects.count() == 2
    assert list(uploads_dir().iterdir()) == []  # the upload is removed once imported


@pytest.mark.django_db
def test_the_import_task_can_run_twice(admin_a):
    token = "0" * 32 + ".zip"
    (uploads_dir() / token).write_bytes(zip_of(ct_dataset()))
    first = import_upload_task.run(token, admin_a.profile.hospital_id, admin_a.pk)
    assert first["stored"] == 1
    assert import_upload_task.run(token, admin_a.profile.hospital_id, admin_a.pk) == {"status": "gone"}
    assert Instance.objects.count() == 1


@pytest.mark.django_db
def test_upload_refuses_non_zip(admin_a):
    client = Client()
    client.post("/accounts/login/", {"username": admin_a.username, "password": PASSWORD})
    f = io.BytesIO(b"hello")
    f.name = "notes.txt"
    page = client.post("/hospital/ingest/", {"archive": f}).content.decode()
    assert "Choose a ZIP file" in page
