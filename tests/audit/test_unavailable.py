"""If the audit write fails, the request fails with 503 and nothing is stored or sent."""

import pytest
from django.db import DatabaseError

from audit import services
from exchange.studies.models import Instance, Study
from tests.conftest import api
from tests.dicom import ct_dataset, multipart, stored_files, to_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def broken_audit(monkeypatch):
    def fail(*args, **kwargs):
        raise DatabaseError("disk full")

    monkeypatch.setattr(services, "_claim_next_seq", fail)


def test_stow_fails_with_503_and_stores_nothing(ingest_a, settings, broken_audit):
    body, ctype = multipart([to_bytes(ct_dataset())])
    response = api(ingest_a).generic("POST", "/dicomweb/studies", body, content_type=ctype)
    # The instance is refused (processing failure) rather than stored without its audit row.
    assert response.status_code in (409, 503)
    assert not Study.objects.exists() and not Instance.objects.exists() and stored_files(settings) == []


def test_qido_fails_with_503_and_sends_no_data(ingest_a, clinician_a, monkeypatch):
    body, ctype = multipart([to_bytes(ct_dataset())])
    api(ingest_a).generic("POST", "/dicomweb/studies", body, content_type=ctype)
    monkeypatch.setattr(services, "_claim_next_seq", lambda: (_ for _ in ()).throw(DatabaseError("down")))
    response = api(clinician_a).get("/dicomweb/studies")
    assert response.status_code == 503
    assert response.json() == {"error": "audit trail unavailable: the request was not carried out"}
    assert b"Wang" not in response.content
