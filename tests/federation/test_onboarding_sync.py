"""Onboard real Orthanc archives through the admin's service functions (create → test → sync)
and compare the platform's index with what each archive holds."""

import datetime
from collections import Counter

import pytest

from audit.models import AuditEvent, Event
from exchange.federation.models import JobStatus, SyncJob
from exchange.studies.models import Availability, Instance, Series, Study
from hospitals.models import ArchiveEndpoint, EndpointStatus
from hospitals.services import endpoint_create, endpoint_go_live, endpoint_sync_start, endpoint_test, hospital_create
from tests.federation.conftest import source_index

pytestmark = pytest.mark.django_db


def platform_index(hospital) -> dict:
    index: dict[str, dict[str, set]] = {}
    for sop, series_uid, study_uid in Instance.objects.filter(series__study__hospital=hospital).values_list(
            "sop_instance_uid", "series__series_instance_uid", "series__study__study_instance_uid"):
        index.setdefault(study_uid, {}).setdefault(series_uid, set()).add(sop)
    return index


@pytest.fixture
def hospitals(db):
    return {
        "PPH": hospital_create(code="PPH", name="Provincial People's Hospital", authority="PPH-MRN", ae_title="PPH_GW"),
        "CITY1": hospital_create(code="CITY1", name="First City Hospital", authority="CITY1-MRN", ae_title="CITY1_GW"),
        "CNTY": hospital_create(code="CNTY", name="County Hospital", authority="CNTY-MRN", ae_title="CNTY_GW"),
    }


def onboard(hospital, server, kind, capture, **extra):
    if kind == "dicomweb":
        endpoint = endpoint_create(hospital=hospital, kind="dicomweb", name="PACS", qido_url=server.dicomweb, timeout=10,
                                   **extra)
    else:
        endpoint = endpoint_create(hospital=hospital, kind="dimse", name="PACS", remote_ae_title=server.aet,
                                   host="127.0.0.1", port=server.dicom_port, timeout=10)
    result = endpoint_test(endpoint)
    assert result.ok, result.message
    assert endpoint.status == EndpointStatus.TESTING
    with capture(execute=True):
        job = endpoint_sync_start(endpoint=endpoint)
    job.refresh_from_db()
    assert job.status == JobStatus.DONE, (job.message, job.errors)
    assert job.errors == []
    endpoint_go_live(endpoint=endpoint)
    endpoint.refresh_from_db()
    assert endpoint.status == EndpointStatus.LIVE
    return endpoint, job


def test_onboard_two_dicomweb_archives_and_one_dimse_archive(archives, hospitals, province,
                                                             django_capture_on_commit_callbacks, settings):
    settings.FEDERATION_QIDO_PAGE = 3  # several adaptive windows even on this small province
    pph, job_pph = onboard(hospitals["PPH"], archives["PPH"], "dicomweb", django_capture_on_commit_callbacks,
                           auth="basic", username="platform", secret="s3cret-pass")
    city, job_city = onboard(hospitals["CITY1"], archives["CITY1"], "dicomweb", django_capture_on_commit_callbacks)
    cnty, job_cnty = onboard(hospitals["CNTY"], archives["CNTY"], "dimse", django_capture_on_commit_callbacks)
    assert ArchiveEndpoint.objects.get(pk=pph.pk).secret == "s3cret-pass"
    assert "s3cret-pass" not in ArchiveEndpoint.objects.get(pk=pph.pk).secret_encrypted

    for code, endpoint, job in (("PPH", pph, job_pph), ("CITY1", city, job_city), ("CNTY", cnty, job_cnty)):
        source = source_index(archives[code])
        assert source, f"{code} archive holds no studies: the test would prove nothing"
        assert platform_index(hospitals[code]) == source, code
        studies = Study.objects.filter(hospital=hospitals[code])
        assert studies.count() == len(source)
        assert {s.availability for s in studies} == {Availability.REMOTE}
        assert {s.source_endpoint_id for s in studies} == {endpoint.pk}
        for study in studies:
            assert study.num_series == len(source[study.study_instance_uid])
            assert study.num_instances == sum(len(v) for v in source[study.study_instance_uid].values())
            for series in study.series.all():
                assert series.num_instances == len(source[study.study_instance_uid][series.series_instance_uid])
        assert Instance.objects.filter(series__study__hospital=hospitals[code]).exclude(storage_key="").count() == 0
        assert (job.studies_seen, job.studies_created) == (len(source), len(source))
        assert job.instances == sum(len(i) for s in source.values() for i in s.values())
        assert job.windows_done > 1  # adaptive windows split the range
        endpoint.refresh_from_db()
        assert endpoint.sync_watermark is not None

    # Patients: every study's patient is the one the province says, people with the same
    # identity card number at two hospitals are one enterprise patient.
    by_uid = {s.study_uid: s for s in province.studies}
    person_of_patient: dict[int, set] = {}
    patient_of_person: dict[int, set] = {}
    for study in Study.objects.all():
        reg = by_uid[study.study_instance_uid].registration
        assert study.dicom_patient_id == reg.local_id
        assert study.patient_name_ideographic == reg.name_ideographic
        person_of_patient.setdefault(study.patient_id, set()).add(reg.person_id)
        if reg.ric:
            patient_of_person.setdefault(reg.person_id, set()).add(study.patient_id)
    assert all(len(p) == 1 for p in person_of_patient.values()), "two people share one enterprise patient"
    linked = [person for person, patients in patient_of_person.items() if len(patients) == 1 and
              len({r.hospital_code for r in province.registrations if r.person_id == person and r.ric}) > 1]
    assert linked, "the province should have someone with the same RIC at two hospitals"
    assert all(len(p) == 1 for p in patient_of_person.values()), "same RIC at two hospitals must be one patient"

    # One audit event per window, with counts and no patient data.
    events = AuditEvent.objects.filter(event=Event.IMPORT, details__action="federation_sync")
    assert events.count() == job_pph.windows_done + job_city.windows_done + job_cnty.windows_done
    for e in events:
        text = str(e.details)
        assert not any(r.local_id in text for r in province.registrations)


def test_second_sync_is_idempotent(archives, hospitals, django_capture_on_commit_callbacks, settings):
    settings.FEDERATION_QIDO_PAGE = 4
    endpoint, first = onboard(hospitals["CITY1"], archives["CITY1"], "dicomweb", django_capture_on_commit_callbacks)
    counts = (Study.objects.count(), Series.objects.count(), Instance.objects.count())
    with django_capture_on_commit_callbacks(execute=True):
        job = endpoint_sync_start(endpoint=endpoint, trigger="manual")
    job.refresh_from_db()
    assert job.status == JobStatus.DONE
    assert (Study.objects.count(), Series.objects.count(), Instance.objects.count()) == counts
    # Incremental: starts at the watermark (minus the look-back day), not at the epoch.
    assert job.watermark_from >= first.watermark_to - datetime.timedelta(days=1)
    assert job.studies_created == 0

    # Full re-read from an early date: still nothing new, nothing duplicated.
    with django_capture_on_commit_callbacks(execute=True):
        again = endpoint_sync_start(endpoint=endpoint, since=datetime.date(2000, 1, 1))
    again.refresh_from_db()
    assert again.status == JobStatus.DONE
    assert (again.studies_created, again.studies_updated) == (0, 0)
    assert again.studies_seen == Study.objects.filter(hospital=hospitals["CITY1"]).count()
    assert (Study.objects.count(), Series.objects.count(), Instance.objects.count()) == counts
    assert Counter(SyncJob.objects.values_list("status", flat=True)) == {"done": 3}
