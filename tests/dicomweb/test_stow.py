"""STOW-RS (PS3.18 §10.5): store, idempotence, per-instance failures, nothing left behind."""

import os

import pydicom
import pytest

from audit.models import AuditEvent, Event
from exchange.studies import storage
from exchange.studies.models import IngestBatch, Instance, Study
from exchange.mpi.models import Patient
from tests.conftest import api
from tests.dicom import stored_files, tmp_leftovers, RIC_LI, RIC_WANG, ct_dataset, multipart, to_bytes

pytestmark = pytest.mark.django_db


def stow(client, files, study_uid=None, **extra):
    body, ctype = multipart(files)
    url = f"/dicomweb/studies/{study_uid}" if study_uid else "/dicomweb/studies"
    return client.generic("POST", url, body, content_type=ctype, **extra)






def test_stow_stores_indexes_and_answers_with_referenced_sop_sequence(ingest_a, settings):
    ds1, ds2 = ct_dataset(instance_number=1), None
    ds2 = ct_dataset(instance_number=2, study_uid=ds1.StudyInstanceUID, series_uid=ds1.SeriesInstanceUID)
    response = stow(api(ingest_a), [to_bytes(ds1), to_bytes(ds2)])
    assert response.status_code == 200, response.content
    body = response.json()
    refs = body["00081199"]["Value"]
    assert {r["00081155"]["Value"][0] for r in refs} == {ds1.SOPInstanceUID, ds2.SOPInstanceUID}
    assert body["00081190"]["Value"][0].endswith(f"/dicomweb/studies/{ds1.StudyInstanceUID}")
    study = Study.objects.get(study_instance_uid=ds1.StudyInstanceUID)
    assert (study.num_series, study.num_instances, study.modalities) == (1, 2, "CT")
    assert study.hospital.code == "PPH"
    assert study.patient_name_ideographic == "王^小东" and study.patient_name_alphabetic == "Wang^XiaoDong"
    assert len(stored_files(settings)) == 2 and tmp_leftovers(settings) == []
    [event] = AuditEvent.objects.filter(event=Event.INSTANCES_STORED, study=study)
    assert sorted(event.details["sop_instance_uids"]) == sorted([ds1.SOPInstanceUID, ds2.SOPInstanceUID])


def test_stored_file_has_zeroed_preamble_and_same_dataset(ingest_a):
    ds = ct_dataset()
    original = to_bytes(ds)
    assert original[:128] == b"\x01" * 128
    assert stow(api(ingest_a), [original]).status_code == 200
    instance = Instance.objects.get(sop_instance_uid=ds.SOPInstanceUID)
    data = storage.path_for(instance.storage_key).read_bytes()
    assert data[:128] == b"\0" * 128 and data[128:] == original[128:]
    assert pydicom.dcmread(storage.path_for(instance.storage_key)).PixelData == ds.PixelData


def test_resending_an_instance_is_idempotent(ingest_a, settings):
    ds = ct_dataset()
    client = api(ingest_a)
    assert stow(client, [to_bytes(ds)]).status_code == 200
    again = stow(client, [to_bytes(ds), to_bytes(ds)])
    assert again.status_code == 200
    assert Instance.objects.count() == 1 and Study.objects.get().num_instances == 1
    assert len(stored_files(settings)) == 1
    assert IngestBatch.objects.order_by("-id").first().duplicates == 2


def test_same_uid_with_different_content_is_refused_and_the_first_is_kept(ingest_a, settings):
    ds = ct_dataset()
    client = api(ingest_a)
    stow(client, [to_bytes(ds)])
    ds.StudyDescription = "changed"
    response = stow(client, [to_bytes(ds)])
    assert response.status_code == 409
    failed = response.json()["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0x0111]
    assert len(stored_files(settings)) == 1


@pytest.mark.parametrize(
    "mutate, code, words",
    [
        (lambda b: b[:600], 0xC000, "truncated"),
        (lambda b: b"this is not dicom at all" * 20, 0xC000, "not a DICOM Part 10"),
        (lambda b: b[: len(b) - 100], 0xC000, "truncated"),
    ],
    ids=["truncated-header", "not-dicom", "truncated-pixels"],
)
def test_bad_files_get_a_clear_reason_and_leave_nothing(ingest_a, settings, mutate, code, words):
    response = stow(api(ingest_a), [mutate(to_bytes(ct_dataset()))])
    assert response.status_code == 409
    failed = response.json()["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [code]
    assert words in failed["00000902"]["Value"][0]
    assert not Study.objects.exists() and not Instance.objects.exists() and not Patient.objects.exists()
    assert stored_files(settings) == [] and tmp_leftovers(settings) == []


@pytest.mark.parametrize("field, value", [("SOPInstanceUID", "1.2.abc"), ("StudyInstanceUID", ""), ("SeriesInstanceUID", "1." + "2" * 70), ("PatientID", "")])
def test_missing_or_malformed_uids_and_patient_id_are_refused(ingest_a, settings, field, value):
    ds = ct_dataset()
    setattr(ds, field, value)
    response = stow(api(ingest_a), [to_bytes(ds)])
    assert response.status_code == 409
    failed = response.json()["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0xA900]
    assert field in failed["00000902"]["Value"][0]
    assert not Instance.objects.exists() and stored_files(settings) == []


def test_non_storage_sop_class_is_refused(ingest_a):
    ds = ct_dataset()
    ds.SOPClassUID = "1.2.840.10008.1.1"  # Verification SOP Class
    response = stow(api(ingest_a), [to_bytes(ds)])
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0x0122]


def test_partial_success_answers_202_with_both_sequences(ingest_a):
    good, bad = ct_dataset(), b"garbage" * 50
    response = stow(api(ingest_a), [to_bytes(good), bad])
    assert response.status_code == 202
    body = response.json()
    assert len(body["00081199"]["Value"]) == 1 and len(body["00081198"]["Value"]) == 1


def test_study_uid_in_url_must_match(ingest_a):
    ds = ct_dataset()
    response = stow(api(ingest_a), [to_bytes(ds)], study_uid="1.2.3.4")
    assert response.status_code == 409
    assert "does not match" in response.json()["00081198"]["Value"][0]["00000902"]["Value"][0]
    assert stow(api(ingest_a), [to_bytes(ds)], study_uid=ds.StudyInstanceUID).status_code == 200


def test_oversize_instance_is_refused_and_the_next_part_is_still_read(ingest_a, settings):
    settings.EXCHANGE_MAX_INSTANCE_BYTES = 4000
    big, small = ct_dataset(size=64), ct_dataset(size=16)
    response = stow(api(ingest_a), [to_bytes(big), to_bytes(small)])
    assert response.status_code == 202
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]
    assert list(Instance.objects.values_list("sop_instance_uid", flat=True)) == [small.SOPInstanceUID]
    assert tmp_leftovers(settings) == []


@pytest.mark.parametrize(
    "content_type, status",
    [
        ("application/dicom", 415),
        ('multipart/related; type="application/dicom+json"; boundary=x', 415),
        ("text/plain", 415),
        ('multipart/related; type="application/dicom"', 400),
    ],
)
def test_wrong_content_type_is_a_4xx(ingest_a, content_type, status):
    response = api(ingest_a).generic("POST", "/dicomweb/studies", b"--x\r\n\r\nabc\r\n--x--\r\n", content_type=content_type)
    assert response.status_code == status
    assert response.json()["error"]


def test_truncated_multipart_body_is_a_400_and_leaves_nothing(ingest_a, settings):
    body, ctype = multipart([to_bytes(ct_dataset())])
    response = api(ingest_a).generic("POST", "/dicomweb/studies", body[: len(body) // 2], content_type=ctype)
    assert response.status_code == 400
    assert "malformed multipart" in response.json()["error"]
    assert not Instance.objects.exists() and stored_files(settings) == [] and tmp_leftovers(settings) == []


def test_only_hospital_accounts_may_store(regulator, db):
    assert stow(api(regulator), [to_bytes(ct_dataset())]).status_code == 403
    assert stow(api(None), [to_bytes(ct_dataset())]).status_code == 401


def test_identity_card_number_links_one_patient_across_hospitals(ingest_a, ingest_b):
    stow(api(ingest_a), [to_bytes(ct_dataset(patient_id="PPH0001", ric=RIC_WANG))])
    stow(api(ingest_b), [to_bytes(ct_dataset(patient_id="C1-77", name="Wang^XiaoDong", ric=RIC_WANG))])
    stow(api(ingest_b), [to_bytes(ct_dataset(patient_id="C1-78", name="Wang^XiaoDong"))])  # no number: new patient
    assert Patient.objects.count() == 2
    linked = Patient.objects.get(ric_index__isnull=False)
    assert sorted(linked.identifiers.values_list("local_id", flat=True)) == ["C1-77", "PPH0001"]


def test_reused_local_id_with_another_identity_number_is_refused(ingest_a):
    client = api(ingest_a)
    stow(client, [to_bytes(ct_dataset(patient_id="PPH0001", ric=RIC_WANG))])
    other_ric = RIC_LI
    response = stow(client, [to_bytes(ct_dataset(patient_id="PPH0001", ric=other_ric))])
    assert response.status_code == 409
    assert Patient.objects.count() == 1


def test_a_request_larger_than_one_chunk_is_indexed_completely(ingest_a, settings):
    first = ct_dataset(instance_number=1)
    datasets = [first] + [
        ct_dataset(instance_number=n, study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID)
        for n in range(2, 121)
    ]
    response = stow(api(ingest_a), [to_bytes(d) for d in datasets] + [b"not dicom" * 30])
    assert response.status_code == 202
    study = Study.objects.get()
    assert (study.num_instances, study.num_series, Instance.objects.count()) == (120, 1, 120)
    assert study.series.get().num_instances == 120
    events = AuditEvent.objects.filter(event=Event.INSTANCES_STORED, study=study)
    assert sum(e.details["instances"] for e in events) == 120
    assert len(stored_files(settings)) == 120 and tmp_leftovers(settings) == []


def test_a_failing_chunk_leaves_no_rows_and_no_files(ingest_a, settings, monkeypatch):
    from exchange.studies import services

    def broken_bulk_create(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(services.Instance.objects, "bulk_create", broken_bulk_create)
    response = stow(api(ingest_a), [to_bytes(ct_dataset())])
    assert response.status_code == 409
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0x0110]
    assert not Study.objects.exists() and not Patient.objects.exists()
    assert stored_files(settings) == [] and tmp_leftovers(settings) == []
