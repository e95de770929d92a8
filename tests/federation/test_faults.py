"""An archive that dies mid-sync: the windows done stay, the watermark stops at the last complete
window, and the next sync (archive back, same storage) ends with exactly the source's studies."""

import datetime

import pytest

from exchange.federation.connectors import ConnectorError, ErrorCode
from exchange.federation.models import JobStatus, SyncJob
from exchange.federation.services import sync_job_claim, sync_job_create, sync_job_finish
from exchange.federation.sync import run_sync
from exchange.federation.tasks import sync_endpoint_task
from exchange.studies.models import Instance, Series, Study
from hospitals.services import endpoint_create, endpoint_sync_start
from tests.federation.conftest import need_orthanc, source_index
from tests.federation.orthanc import OrthancServer

pytestmark = pytest.mark.django_db


@pytest.fixture
def flaky_archive(study_files, tmp_path):
    need_orthanc()
    server = OrthancServer(tmp_path / "flaky", aet="FLAKY_PACS").start()
    try:
        server.upload([p for paths in study_files.values() for p in paths])
        yield server
    finally:
        server.stop()


def uids(hospital):
    return sorted(Study.objects.filter(hospital=hospital).values_list("study_instance_uid", flat=True))


def test_archive_killed_mid_sync_then_back(flaky_archive, hospital_a, settings, django_capture_on_commit_callbacks):
    settings.FEDERATION_QIDO_PAGE = 2
    source = source_index(flaky_archive)
    assert len(source) > 4
    endpoint = endpoint_create(hospital=hospital_a, kind="dicomweb", name="PACS", qido_url=flaky_archive.dicomweb, timeout=5)

    # given: a sync whose archive is killed (SIGKILL) right after the first window with studies committed
    job = sync_job_create(endpoint=endpoint, trigger="initial")
    assert sync_job_claim(job.pk)
    windows = []

    def kill_after_first(lo, hi):
        if not windows and Study.objects.exists():
            windows.append((lo, hi))
            flaky_archive.kill()

    with pytest.raises(ConnectorError) as failure:
        run_sync(job, connector=None, after_window=kill_after_first)
    assert failure.value.code == ErrorCode.REFUSED
    sync_job_finish(job.pk, failed=True, message=failure.value.message)

    # then: only whole windows are in the index, and the watermark marks the first one
    endpoint.refresh_from_db()
    assert endpoint.sync_watermark == windows[0][1]
    partial = uids(hospital_a)
    assert 0 < len(partial) < len(source)
    assert set(partial) <= set(source)

    # when: the archive is down, the task fails the job with a clear message (no retry in eager mode)
    with django_capture_on_commit_callbacks(execute=True):
        down = endpoint_sync_start(endpoint=endpoint)
    down.refresh_from_db()
    assert down.status == JobStatus.FAILED and down.message.startswith("Connection refused")

    # when: the archive comes back with the same storage and the next sync runs
    flaky_archive.start()
    with django_capture_on_commit_callbacks(execute=True):
        resumed = endpoint_sync_start(endpoint=endpoint)
    resumed.refresh_from_db()
    assert resumed.status == JobStatus.DONE, resumed.message
    # it resumed from the watermark (minus the look-back day), not from the beginning
    assert resumed.watermark_from >= windows[0][1] - datetime.timedelta(days=1)

    # then: exactly the source's studies, series and instances, no duplicates
    assert uids(hospital_a) == sorted(source)
    assert Series.objects.count() == sum(len(s) for s in source.values())
    assert Instance.objects.count() == sum(len(i) for s in source.values() for i in s.values())
    assert sorted(Instance.objects.values_list("sop_instance_uid", flat=True)) == sorted(
        sop for s in source.values() for i in s.values() for sop in i)


def test_a_second_run_for_the_same_endpoint_does_nothing(hospital_a):
    endpoint = endpoint_create(hospital=hospital_a, kind="dicomweb", name="PACS", qido_url="http://127.0.0.1:9/dicom-web")
    job = sync_job_create(endpoint=endpoint, trigger="initial")
    assert sync_job_create(endpoint=endpoint, trigger="periodic") is None  # one active job per endpoint
    assert sync_job_claim(job.pk)
    assert not sync_job_claim(job.pk)  # a redelivered message finds the job taken
    assert sync_endpoint_task.run(endpoint.pk)["status"] == "skipped"  # beat tick during the run
    assert sync_endpoint_task.run(endpoint.pk, None, job.pk)["status"] == "skipped"
    assert SyncJob.objects.get(pk=job.pk).status == JobStatus.RUNNING
    assert SyncJob.objects.count() == 1


def test_a_job_left_by_a_crashed_worker_is_taken_over(hospital_a, settings):
    settings.FEDERATION_SYNC_STALE_SECONDS = 0
    endpoint = endpoint_create(hospital=hospital_a, kind="dicomweb", name="PACS", qido_url="http://127.0.0.1:9/dicom-web")
    job = sync_job_create(endpoint=endpoint)
    assert sync_job_claim(job.pk)
    assert sync_job_claim(job.pk)  # heartbeat too old: the redelivered task takes it over


def test_a_study_deleted_at_the_archive_is_withdrawn_by_a_full_sync_and_comes_back_with_it(
        flaky_archive, study_files, hospital_a, clinician_a, monkeypatch, django_capture_on_commit_callbacks):
    import pydicom
    import requests
    from django.test import Client

    from audit.models import AuditEvent, Event
    from exchange.federation.connectors.dicomweb import DicomwebConnector
    from exchange.studies.models import Availability
    from tests.conftest import api

    endpoint = endpoint_create(hospital=hospital_a, kind="dicomweb", name="PACS", qido_url=flaky_archive.dicomweb, timeout=5)
    with django_capture_on_commit_callbacks(execute=True):
        endpoint_sync_start(endpoint=endpoint)
    source = source_index(flaky_archive)
    assert uids(hospital_a) == sorted(source)
    deleted, capped = sorted(source)[:2]
    s = requests.Session()
    s.auth = flaky_archive.auth
    (orthanc_id,) = [f["ID"] for f in s.post(flaky_archive.url + "/tools/lookup", data=deleted, timeout=30).json()]
    s.delete(f"{flaky_archive.url}/studies/{orthanc_id}", timeout=30).raise_for_status()
    # and the archive leaves another study out of its listings, as an archive that caps its
    # answers would: asked for that study's UID, it still has it
    listing = DicomwebConnector.find_studies
    monkeypatch.setattr(DicomwebConnector, "find_studies", lambda self, *a, **k: [
        ds for ds in listing(self, *a, **k) if ds.StudyInstanceUID != capped])

    def full_sync():
        with django_capture_on_commit_callbacks(execute=True):
            job = endpoint_sync_start(endpoint=endpoint, since=datetime.date(1980, 1, 1), trigger="operator")
        job.refresh_from_db()
        assert job.status == JobStatus.DONE, job.message
        return job

    # when: the operator reconciles the whole archive
    job = full_sync()

    # then: the deleted study is withdrawn (kept, readable by nobody), the unlisted one is not
    assert job.studies_withdrawn == 1
    gone = Study.objects.get(study_instance_uid=deleted)
    assert gone.availability == Availability.WITHDRAWN
    assert Study.objects.get(study_instance_uid=capped).availability == Availability.REMOTE
    event = AuditEvent.objects.get(event=Event.IMPORT, study=gone)
    assert event.details["action"] == "withdrawn_at_source" and event.details["job"] == job.pk
    client = api(clinician_a)
    listed = [s["0020000D"]["Value"][0] for s in client.get("/dicomweb/studies").json()]
    assert deleted not in listed and capped in listed
    assert client.get(f"/dicomweb/studies/{deleted}").status_code == 404
    assert client.get(f"/dicomweb/studies/{deleted}/metadata").status_code == 404
    page = Client()
    page.force_login(clinician_a)
    assert page.get(f"/studies/{gone.pk}/").status_code == 404
    # a second run withdraws nothing more and writes no second event
    assert full_sync().studies_withdrawn == 0
    assert AuditEvent.objects.filter(event=Event.IMPORT, study=gone).count() == 1

    # when: the archive holds the study again, the next sync brings it back
    files = [p for paths in study_files.values() for p in paths
             if pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID == deleted]
    flaky_archive.upload(files)
    full_sync()
    assert Study.objects.get(study_instance_uid=deleted).availability == Availability.REMOTE
    assert deleted in [s["0020000D"]["Value"][0] for s in client.get("/dicomweb/studies").json()]


def test_a_study_the_archive_moves_to_another_patient_follows_it(flaky_archive, hospital_a,
                                                                   django_capture_on_commit_callbacks):
    import requests

    from audit.models import AuditEvent, Event

    endpoint = endpoint_create(hospital=hospital_a, kind="dicomweb", name="PACS", qido_url=flaky_archive.dicomweb, timeout=5)
    with django_capture_on_commit_callbacks(execute=True):
        endpoint_sync_start(endpoint=endpoint)
    study = Study.objects.filter(hospital=hospital_a).order_by("study_instance_uid").first()
    before = study.patient_id
    # the PACS corrects a mis-filed study: same UIDs, filed under another patient
    s = requests.Session()
    s.auth = flaky_archive.auth
    (orthanc_id,) = [f["ID"] for f in s.post(flaky_archive.url + "/tools/lookup", data=study.study_instance_uid,
                                             timeout=30).json()]
    modified = []
    for instance in s.get(f"{flaky_archive.url}/studies/{orthanc_id}/instances", timeout=30).json():
        r = s.post(f"{flaky_archive.url}/instances/{instance['ID']}/modify", timeout=60, json={
            "Replace": {"PatientID": "PPH-MOVED-1", "PatientName": "Zhou^Moved=周^移", "PatientBirthDate": "19700101",
                        "PatientSex": "F"},
            "Remove": ["OtherPatientIDsSequence"],  # another person: not the first patient's identity card
            "Keep": ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"], "Force": True})
        assert r.status_code == 200, r.text
        modified.append(r.content)
    s.delete(f"{flaky_archive.url}/studies/{orthanc_id}", timeout=30).raise_for_status()
    for body in modified:
        s.post(f"{flaky_archive.url}/instances", data=body, timeout=30).raise_for_status()

    with django_capture_on_commit_callbacks(execute=True):
        job = endpoint_sync_start(endpoint=endpoint, since=datetime.date(1980, 1, 1), trigger="operator")
    job.refresh_from_db()
    assert job.status == JobStatus.DONE and job.errors == [], (job.message, job.errors)

    study.refresh_from_db()
    assert study.patient_id != before and study.identifier.local_id == "PPH-MOVED-1"
    assert study.dicom_patient_id == "PPH-MOVED-1" and study.availability == "remote"
    event = AuditEvent.objects.get(event=Event.PATIENT_RECORD, study=study, details__action="study_reassigned_at_source")
    assert (event.patient_id, event.details["from_patient"], event.details["to_patient"]) == (
        study.patient_id, before, study.patient_id)
    assert uids(hospital_a) == sorted(source_index(flaky_archive))  # nothing duplicated, nothing withdrawn
