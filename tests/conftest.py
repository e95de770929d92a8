"""Named people for tests: a clinician at hospital A and one at hospital B, hospital A's admin
and ingest gateway, a regulator, and (once their data exists) a patient."""

import os

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from hospitals.services import account_create, hospital_create

PASSWORD = "correct-horse-battery-9"
IN_CI = os.environ.get("CI", "").lower() == "true"


def require(component: str, available: bool, why: str = "") -> None:
    """Skip locally when a real component is missing; in CI a missing component is a failure."""
    if available:
        return
    message = f"{component} is not available{': ' + why if why else ''}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: components must be installed by .ci/run)")
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _storage(settings, tmp_path):
    settings.EXCHANGE_STORAGE_DIR = tmp_path / "storage"
    # The production hasher is slow on purpose; tests create many accounts.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def celery_eager():
    """Run tasks in-process even when CELERY_BROKER_URL points at a real broker (CI): for tests
    of what a task does, not of the broker (tests/studies/test_tasks.py covers the worker)."""
    from exchange import celery_app

    before = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = before


@pytest.fixture
def hospital_a(db):
    return hospital_create(code="PPH", name="Provincial People's Hospital", authority="PPH-MRN", ae_title="PPH_PACS")


@pytest.fixture
def hospital_b(db):
    return hospital_create(code="CITY1", name="First City Hospital", authority="C1-MRN", ae_title="CITY1_PACS")


def _user(username, role, hospital=None, patient=None):
    return account_create(username=username, role=role, password=PASSWORD, hospital=hospital, patient=patient)


@pytest.fixture
def clinician_a(hospital_a):
    return _user("dr_a", "clinician", hospital_a)


@pytest.fixture
def clinician_b(hospital_b):
    return _user("dr_b", "clinician", hospital_b)


@pytest.fixture
def admin_a(hospital_a):
    return _user("admin_a", "hospital_admin", hospital_a)


@pytest.fixture
def ingest_a(hospital_a):
    return _user("gateway_a", "ingest", hospital_a)


@pytest.fixture
def ingest_b(hospital_b):
    return _user("gateway_b", "ingest", hospital_b)


@pytest.fixture
def regulator(db):
    return _user("regulator", "regulator")


def make_patient_user(patient, username="patient1"):
    return _user(username, "patient", patient=patient)


def api(user=None) -> APIClient:
    client = APIClient()
    if user is not None:
        token, _ = Token.objects.get_or_create(user=user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client
