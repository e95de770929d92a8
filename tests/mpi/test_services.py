"""The patient index: one matcher for every identity, and reversible stewardship."""

from datetime import date

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from audit.models import AuditEvent, Event
from exchange.mpi import matching
from exchange.mpi.models import MergeRecord, Patient, PatientIdentifier, ReviewItem, RicStatus
from exchange.mpi.services import (
    Demographics,
    IdentityConflict,
    identifier_resolve,
    identifier_unlink,
    merge_undo,
    patient_link,
    patient_merge,
    review_accept,
    review_reject,
)
from exchange.studies.models import Study
from tests.conftest import api
from tests.dicom import RIC_LI, RIC_WANG, ct_dataset, multipart, to_bytes

pytestmark = pytest.mark.django_db
TEST_KEY = "8BTvCw77-vCIG6ByHmRDKVolGfLaS6wCINJfHq_2X6I="
RIC_WANG_BAD_CHECK = RIC_WANG[:-1] + ("5" if RIC_WANG[-1] != "5" else "6")


@pytest.fixture(autouse=True)
def _mpi_settings(settings):
    if not settings.EXCHANGE_ENCRYPTION_KEYS:
        settings.EXCHANGE_ENCRYPTION_KEYS = [TEST_KEY]
    # The thresholds the matcher's weights were set for (docs/decisions/0008-mpi-matching.md).
    settings.MPI_LINK_THRESHOLD = matching.DEFAULT_LINK_THRESHOLD
    settings.MPI_REVIEW_THRESHOLD = matching.DEFAULT_REVIEW_THRESHOLD


def demo(local_id, pn="Wang^XiaoDong=王^小东", birth=date(1990, 3, 7), sex="M", ric=None, phone=None):
    groups = (pn.split("=") + ["", "", ""])[:3]
    return Demographics(local_id=local_id, name_alphabetic=groups[0], name_ideographic=groups[1],
                        name_phonetic=groups[2], birth_date=birth, sex=sex, ric=ric, phone=phone)


def resolve(hospital, *args, actor=None, **kwargs) -> PatientIdentifier:
    with transaction.atomic():
        return identifier_resolve(hospital=hospital, demographics=demo(*args, **kwargs), actor=actor)


def stow(user, **kwargs) -> Study:
    ds = ct_dataset(**kwargs)
    body, ctype = multipart([to_bytes(ds)])
    response = api(user).generic("POST", "/dicomweb/studies", body, content_type=ctype)
    assert response.status_code == 200, response.content
    return Study.objects.get(study_instance_uid=ds.StudyInstanceUID)


def studies_of(patient) -> set[int]:
    return set(Study.objects.filter(patient=patient).values_list("pk", flat=True))


def test_one_person_at_two_hospitals_without_number_becomes_one_patient(ingest_a, ingest_b):
    a = stow(ingest_a, patient_id="PPH0001", name="Wang^XiaoDong=王^小东")
    b = stow(ingest_b, patient_id="C1-77", name="WANG^Xiao Dong")
    assert Patient.objects.count() == 1
    assert a.patient_id == b.patient_id
    assert not ReviewItem.objects.exists()
    event = AuditEvent.objects.filter(event=Event.PATIENT_RECORD, details__action="identifier_resolve").last()
    assert event.details["outcome"] == "link" and event.patient_id == a.patient_id


def test_twins_are_never_auto_linked(hospital_a, hospital_b):
    one = resolve(hospital_a, "A1", "Wang^XiaoDong=王^小东")
    two = resolve(hospital_b, "B1", "Wang^XiaoMing=王^小明")
    assert one.patient_id != two.patient_id
    assert not ReviewItem.objects.exists()


def test_valid_identity_number_always_links(hospital_a, hospital_b):
    one = resolve(hospital_a, "A1", "Wang^XiaoDong=王^小东", ric=RIC_WANG)
    other_name = resolve(hospital_b, "B1", "Li^Si", birth=date(1991, 1, 1), ric=RIC_WANG)
    assert one.patient_id == other_name.patient_id
    assert Patient.objects.get(pk=one.patient_id).ric_index == one.ric_index


def test_different_valid_numbers_keep_identical_demographics_apart(hospital_a, hospital_b):
    one = resolve(hospital_a, "A1", ric=RIC_WANG)
    two = resolve(hospital_b, "B1", ric=RIC_LI)
    assert one.patient_id != two.patient_id


def test_invalid_check_digit_is_flagged_and_not_trusted(hospital_a, hospital_b):
    good = resolve(hospital_a, "A1", "Zhao^Yun", birth=date(1970, 1, 1), ric=RIC_WANG)
    bad = resolve(hospital_b, "B1", "Qian^Duo", birth=date(1980, 5, 5), ric=RIC_WANG_BAD_CHECK)
    assert bad.ric_status == RicStatus.INVALID and bad.ric_index is None and bad.ric_encrypted == ""
    assert good.ric_status == RicStatus.VALID
    assert bad.patient_id != good.patient_id


def test_reused_local_id_at_two_hospitals_stays_two_patients(hospital_a, hospital_b):
    one = resolve(hospital_a, "P001", "Zhang^Wei=张^伟", birth=date(1960, 2, 2))
    two = resolve(hospital_b, "P001", "Liu^Fang=刘^芳", birth=date(1985, 7, 9), sex="F")
    assert one.patient_id != two.patient_id


def test_same_local_id_with_another_number_is_refused(hospital_a):
    resolve(hospital_a, "A1", ric=RIC_WANG)
    with pytest.raises(IdentityConflict):
        resolve(hospital_a, "A1", ric=RIC_LI)


def test_review_band_pair_creates_review_item_and_accept_links_with_studies(ingest_a, ingest_b, admin_a, hospital_a):
    first = stow(ingest_b, patient_id="C1-5", name="Liu^Xiaoming", birth_date="19750505")
    second = stow(ingest_a, patient_id="PPH-5", name="Liu^Xiaomin", birth_date="19750505")  # a typo
    assert first.patient_id != second.patient_id
    item = ReviewItem.objects.get()
    assert item.identifier.local_id == "PPH-5" and item.candidate.local_id == "C1-5"
    assert matching.DEFAULT_REVIEW_THRESHOLD <= item.score < matching.DEFAULT_LINK_THRESHOLD
    assert set(item.breakdown) >= {"name", "birth_date", "sex"}
    review_accept(item=item, actor=admin_a, comment="same person, typo")
    second.refresh_from_db()
    assert second.patient_id == first.patient_id
    item.refresh_from_db()
    assert item.status == "accepted" and item.decided_by == admin_a
    assert AuditEvent.objects.filter(details__action="review_accept").exists()


def test_reject_keeps_them_apart(hospital_a, hospital_b, admin_a):
    resolve(hospital_b, "C1-5", "Liu^Xiaoming", birth=date(1975, 5, 5))
    newer = resolve(hospital_a, "PPH-5", "Liu^Xiaomin", birth=date(1975, 5, 5))
    item = ReviewItem.objects.get()
    review_reject(item=item, actor=admin_a, comment="different people")
    newer.refresh_from_db()
    assert newer.patient_id != item.candidate.patient_id
    with pytest.raises(ValidationError):
        review_accept(item=item, actor=admin_a)


def test_other_hospitals_admin_cannot_decide(hospital_a, hospital_b, admin_a):
    resolve(hospital_a, "PPH-5", "Liu^Xiaoming", birth=date(1975, 5, 5))
    resolve(hospital_b, "C1-5", "Liu^Xiaomin", birth=date(1975, 5, 5))
    item = ReviewItem.objects.get()
    assert item.identifier.hospital == hospital_b
    with pytest.raises(PermissionDenied):
        review_accept(item=item, actor=admin_a)


def test_unlink_restores_each_patients_studies_exactly(ingest_a, ingest_b, admin_a):
    a1 = stow(ingest_a, patient_id="PPH0001", ric=RIC_WANG)
    a2 = stow(ingest_a, patient_id="PPH0001", ric=RIC_WANG)
    b1 = stow(ingest_b, patient_id="C1-77", name="Wang^XiaoDong")  # links by demographics
    assert a1.patient_id == a2.patient_id == b1.patient_id
    before = studies_of(a1.patient)
    identifier = PatientIdentifier.objects.get(local_id="PPH0001")
    rec = identifier_unlink(identifier=identifier, actor=admin_a, reason="wrong link")
    identifier.refresh_from_db()
    assert studies_of(identifier.patient) == {a1.pk, a2.pk}
    assert studies_of(b1.identifier.patient) == {b1.pk}
    # the identity card number went with the identifier that carries it
    assert identifier.patient.ric_index == identifier.ric_index
    assert all(s.patient_id == s.identifier.patient_id for s in Study.objects.all())
    merge_undo(merge=rec, actor=admin_a, reason="it was right")
    assert studies_of(b1.identifier.patient) == before


def test_merge_and_undo_restore_exactly(ingest_a, ingest_b, admin_a, django_user_model):
    a = stow(ingest_a, patient_id="PPH1", name="Zhao^Yun=赵^云", birth_date="19700101", ric=RIC_WANG)
    b = stow(ingest_b, patient_id="C1", name="Zhao^Yun=赵^云", birth_date="19800101")
    b2 = stow(ingest_b, patient_id="C1", name="Zhao^Yun=赵^云", birth_date="19800101")
    pa, pb = Patient.objects.get(pk=a.patient_id), Patient.objects.get(pk=b.patient_id)
    assert pa != pb
    before = {pa.pk: studies_of(pa), pb.pk: studies_of(pb)}
    steward = django_user_model.objects.create_user("steward", is_staff=True)
    rec = patient_merge(source=pa, target=pb, actor=steward, reason="same person")
    assert studies_of(pb) == before[pa.pk] | before[pb.pk] and studies_of(pa) == set()
    pa.refresh_from_db()
    pb.refresh_from_db()
    assert pa.merged_into == pb and pb.ric_index and not pa.ric_index
    with pytest.raises(PermissionDenied):
        identifier_unlink(identifier=PatientIdentifier.objects.get(local_id="C1"), actor=admin_a, reason="not mine")
    merge_undo(merge=rec, actor=steward, reason="not the same")
    assert {pa.pk: studies_of(pa), pb.pk: studies_of(pb)} == before
    pa.refresh_from_db()
    assert pa.merged_into is None and pa.ric_index
    assert MergeRecord.objects.get().undone_by == steward
    with pytest.raises(ValidationError):
        merge_undo(merge=rec, actor=steward, reason="twice")
    assert {b2.pk} <= studies_of(pb)


def test_link_moves_studies_and_refuses_conflicting_numbers(hospital_a, hospital_b, admin_a):
    one = resolve(hospital_a, "A1", "Sun^Li", birth=date(1950, 1, 1), ric=RIC_LI)
    two = resolve(hospital_b, "B1", "Zhou^Qi", birth=date(1960, 1, 1), ric=RIC_WANG)
    three = resolve(hospital_a, "A2", "Wu^Di", birth=date(1940, 1, 1))
    with pytest.raises(ValidationError):
        patient_link(identifier=one, patient=two.patient, actor=admin_a, reason="x")
    patient_link(identifier=three, patient=one.patient, actor=admin_a, reason="same person")
    three.refresh_from_db()
    assert three.patient_id == one.patient_id


def test_decisions_are_audited_without_numbers(hospital_a, hospital_b, ingest_a):
    resolve(hospital_a, "A1", ric=RIC_WANG, phone="13812345678", actor=ingest_a)
    resolve(hospital_b, "B1", ric=RIC_WANG, actor=ingest_a)
    events = AuditEvent.objects.filter(event=Event.PATIENT_RECORD)
    assert [e.details["outcome"] for e in events] == ["new", "link"]
    for e in events:
        text = str(e.details)
        assert RIC_WANG not in text and "13812345678" not in text


def test_phone_links_evidence_and_is_stored_encrypted(hospital_a, hospital_b):
    one = resolve(hospital_a, "A1", "Ma^Lan", birth=date(1999, 9, 9), sex="F", phone="+86 138-1234-5678")
    assert one.phone_index and one.phone_encrypted and "13812345678" not in one.phone_encrypted
    assert one.get_phone() == "13812345678" and one.phone_masked == "138******78"


def test_candidates_come_from_the_blocking_index(hospital_a, hospital_b, django_assert_max_num_queries):
    for n in range(30):
        resolve(hospital_a, f"A{n}", f"Person^N{chr(97 + n % 26)}{n}", birth=date(1950 + n, 1, 1))
    # Resolving a new identity: a bounded number of queries, whatever the index size.
    with django_assert_max_num_queries(25):
        resolve(hospital_b, "B1", "Person^Na0", birth=date(1950, 1, 1))
