"""A small province for consent tests: patient Wang has a CT at hospital A (PPH) and an MR at
hospital C; patient Li has a CT at hospital B (CITY1). Clinicians at B in every consent state."""

from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from consent import services
from consent.models import Consent, Scope
from exchange.mpi import crypto
from exchange.mpi.models import PatientIdentifier
from exchange.studies.models import Study
from hospitals.services import account_create, hospital_create
from tests.conftest import PASSWORD, api, make_patient_user
from tests.dicom import RIC_LI, RIC_WANG, ct_dataset, multipart, to_bytes

PHONE_WANG = "13812345678"
PHONE_LI = "13987654321"


def stow(user, *datasets):
    body, ctype = multipart([to_bytes(d) for d in datasets])
    response = api(user).generic("POST", "/dicomweb/studies", body, content_type=ctype)
    assert response.status_code == 200, response.content


def login(user) -> Client:
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client


def set_phone(patient, phone):
    PatientIdentifier.objects.filter(patient=patient).update(
        phone_index=crypto.blind_index(phone, domain="phone"), phone_encrypted=crypto.encrypt(phone))


def user(username, role, hospital=None, patient=None):
    return account_create(username=username, role=role, password=PASSWORD, hospital=hospital, patient=patient)


# A fixed test key (the MPI encrypts phone and identity card numbers at rest).
TEST_ENCRYPTION_KEY = "dGVzdC1vbmx5LWNvbnNlbnQta2V5LTMyLWJ5dGVzISE="


@pytest.fixture(autouse=True)
def _encryption_key(settings):
    if not getattr(settings, "EXCHANGE_ENCRYPTION_KEYS", None):
        settings.EXCHANGE_ENCRYPTION_KEYS = [TEST_ENCRYPTION_KEY]


@dataclass
class World:
    hospital_a: object
    hospital_b: object
    hospital_c: object
    study: Study  # Wang's CT at A: the study every actor is tested against
    study_c: Study  # Wang's MR at C
    study_li: Study  # Li's CT at B
    patient: object
    other: object
    actors: dict


@pytest.fixture
def world(db, settings, hospital_a, hospital_b, ingest_a, ingest_b, clinician_a, admin_a, regulator):
    settings.SMS_BACKEND = "console"
    settings.CONSENT_DEFAULT = "opt-in"
    hospital_c = hospital_create(code="CITY2", name="Second City Hospital", authority="C2-MRN", ae_title="CITY2_PACS")
    ingest_c = user("gateway_c", "ingest", hospital_c)
    stow(ingest_a, ct_dataset(patient_id="PPH0001", ric=RIC_WANG, accession="A1", study_date="20260105"))
    stow(ingest_c, ct_dataset(patient_id="C2-77", ric=RIC_WANG, modality="MR", accession="C1", study_date="20250601"))
    stow(ingest_b, ct_dataset(patient_id="C1-0001", name="Li^Na=李^娜", ric=RIC_LI, birth_date="19850101", sex="F", accession="B1"))
    study = Study.objects.get(hospital=hospital_a)
    study_c = Study.objects.get(hospital=hospital_c)
    study_li = Study.objects.get(hospital=hospital_b)
    assert study.patient_id == study_c.patient_id != study_li.patient_id
    patient, other = study.patient, study_li.patient
    set_phone(patient, PHONE_WANG)
    set_phone(other, PHONE_LI)
    patient_user = make_patient_user(patient, "wang")
    other_user = make_patient_user(other, "li")
    b = hospital_b
    actors = {
        "patient": patient_user,
        "other_patient": other_user,
        "clinician_source": clinician_a,
        "clinician_no_consent": user("dr_none", "clinician", b),
        "clinician_consent": user("dr_consent", "clinician", b),
        "clinician_expired": user("dr_expired", "clinician", b),
        "clinician_revoked": user("dr_revoked", "clinician", b),
        "clinician_break_glass": user("dr_glass", "clinician", b),
        "hospital_admin": admin_a,
        "regulator": regulator,
    }
    services.consent_grant(actor=patient_user, patient=patient, scope=Scope.CLINICIAN, clinician=actors["clinician_consent"])
    expired = services.consent_grant(actor=patient_user, patient=patient, scope=Scope.CLINICIAN,
                                      clinician=actors["clinician_expired"], expires_at=timezone.now() + timedelta(hours=1))
    Consent.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    revoked = services.consent_grant(actor=patient_user, patient=patient, scope=Scope.CLINICIAN, clinician=actors["clinician_revoked"])
    services.consent_revoke(actor=patient_user, consent=revoked)
    services.break_glass_open(actor=actors["clinician_break_glass"], patient=patient, reason="unconscious",
                              reason_text="Unconscious after a road accident, CT needed now")
    return World(hospital_a, hospital_b, hospital_c, study, study_c, study_li, patient, other, actors)
