"""A failed audit write fails the request: nothing is stored, nothing is sent (issue #4).

The audit insert is made to fail the way a database would (DatabaseError); audit.record turns
that into AuditUnavailable, and audit.middleware answers 503 "audit trail unavailable" with no
data. 500 is not acceptable: it would mean the failure escaped unhandled.
"""

import pytest
from django.db import DatabaseError
from django.test import Client

from audit.models import AuditEvent, AuditHead, Event
from exchange.mpi.models import Patient
from exchange.studies.models import Instance, Series, Study
from tests.conftest import api
from tests.dicom import ct_dataset, multipart, stored_files, tmp_leftovers, to_bytes

pytestmark = pytest.mark.django_db(transaction=True)

PATIENT_ID = "PPH0001"
MESSAGE = b"audit trail unavailable"


@pytest.fixture
def seeded(ingest_a):
    ds = ct_dataset(patient_id=PATIENT_ID)
    body, ctype = multipart([to_bytes(ds)])
    assert api(ingest_a).generic("POST", "/dicomweb/studies", body, content_type=ctype).status_code == 200
    study = Study.objects.get()
    return {"ds": ds, "study": study, "series": Series.objects.get()}


def _refuse(*args, **kwargs):
    raise DatabaseError("audit insert failed (test)")


@pytest.fixture(params=["event insert", "head update"])
def audit_broken(request, monkeypatch):
    """The audit write fails at the insert of the event, or at the update of the chain head."""
    if request.param == "event insert":
        monkeypatch.setattr(AuditEvent, "save", _refuse)
    else:
        monkeypatch.setattr("audit.services._claim_next_seq", _refuse)
    return request.param


def _no_raise(client):
    # The platform must answer for itself; the test client must not re-raise what escaped.
    client.raise_request_exception = False
    return client


def _body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def assert_refused_without_data(response, *secrets: str) -> None:
    assert response.status_code == 503, f"expected 503, got {response.status_code}: {response.content[:200]!r}"
    assert not response.streaming
    body = _body(response)
    assert MESSAGE in body
    for secret in (PATIENT_ID, "Wang", "DICM", *secrets):
        assert secret.encode() not in body, f"{secret!r} was sent although the audit write failed"


def test_stow_stores_nothing_when_the_audit_fails(ingest_a, settings, audit_broken):
    # given
    ds = ct_dataset(patient_id="PPH0002", name="Zhang^Wei")
    body, ctype = multipart([to_bytes(ds)])
    # when
    response = _no_raise(api(ingest_a)).generic("POST", "/dicomweb/studies", body, content_type=ctype)
    # then
    assert_refused_without_data(response, ds.SOPInstanceUID)
    assert (Study.objects.count(), Series.objects.count(), Instance.objects.count()) == (0, 0, 0)
    assert not Patient.objects.exists()
    assert stored_files(settings) == [] and tmp_leftovers(settings) == []


@pytest.mark.parametrize("path", [
    "/dicomweb/studies",
    "/dicomweb/studies?PatientID=PPH0001",
    "/dicomweb/series",
    "/dicomweb/instances",
    "/dicomweb/studies/{study_uid}/series",
])
def test_qido_sends_no_results_when_the_audit_fails(seeded, clinician_a, audit_broken, path):
    response = _no_raise(api(clinician_a)).get(path.format(study_uid=seeded["ds"].StudyInstanceUID))
    assert_refused_without_data(response, seeded["ds"].SOPInstanceUID, seeded["ds"].SeriesInstanceUID)


@pytest.mark.parametrize("suffix, accept", [
    ("", 'multipart/related; type="application/dicom"'),
    ("/series/{series_uid}", ""),
    ("/series/{series_uid}/instances/{sop_uid}", ""),
    ("/metadata", ""),
    ("/series/{series_uid}/instances/{sop_uid}/rendered", "image/png"),
    ("/series/{series_uid}/instances/{sop_uid}/frames/1", 'multipart/related; type="application/octet-stream"'),
])
def test_wado_sends_no_bytes_when_the_audit_fails(seeded, clinician_a, audit_broken, suffix, accept):
    ds = seeded["ds"]
    path = f"/dicomweb/studies/{ds.StudyInstanceUID}" + suffix.format(series_uid=ds.SeriesInstanceUID, sop_uid=ds.SOPInstanceUID)
    response = _no_raise(api(clinician_a)).get(path, HTTP_ACCEPT=accept)
    assert_refused_without_data(response, ds.SOPInstanceUID)
    assert b"PNG" not in response.content


def test_access_denied_that_cannot_be_audited_is_still_refused(seeded, clinician_b, audit_broken):
    response = _no_raise(api(clinician_b)).get(f"/dicomweb/studies/{seeded['ds'].StudyInstanceUID}")
    assert_refused_without_data(response)


@pytest.fixture
def browser(clinician_a) -> Client:
    """A clinician's browser, logged in while the audit still worked (a login is audited too)."""
    client = Client()
    client.force_login(clinician_a)
    return _no_raise(client)


@pytest.mark.parametrize("page", ["/studies/{study}/", "/studies/{study}/series/{series}/", "/search/?patient_id=PPH0001"])
def test_page_shows_nothing_when_the_audit_fails(seeded, browser, audit_broken, page):
    response = browser.get(page.format(study=seeded["study"].pk, series=seeded["series"].pk))
    assert_refused_without_data(response, seeded["ds"].SOPInstanceUID, "Zhang")
    assert b"<table" not in response.content


def test_a_failed_audit_leaves_the_chain_intact(seeded, clinician_a, monkeypatch):
    from audit.verify import verify_chain

    head = AuditHead.objects.get()
    monkeypatch.setattr(AuditEvent, "save", _refuse)
    assert _no_raise(api(clinician_a)).get("/dicomweb/studies").status_code == 503
    monkeypatch.undo()
    assert AuditHead.objects.get().seq == head.seq  # the claimed seq was rolled back with the action
    assert api(clinician_a).get("/dicomweb/studies").status_code == 200
    assert AuditEvent.objects.filter(event=Event.QUERY).count() == 1
    assert verify_chain().ok


def test_a_login_that_cannot_be_audited_does_not_log_in(clinician_a, monkeypatch):
    from tests.conftest import PASSWORD

    client = _no_raise(Client())
    monkeypatch.setattr(AuditEvent, "save", _refuse)
    response = client.post("/accounts/login/", {"username": clinician_a.username, "password": PASSWORD})
    assert response.status_code == 503
    monkeypatch.undo()
    assert client.get("/search/").status_code == 302, "the session of an unaudited login is usable"
