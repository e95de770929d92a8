"""The review queue page: side by side, score breakdown, accept/reject through the web form."""

import re

import pytest
from django.test import Client

from audit.models import AuditEvent, Event
from exchange.mpi import matching
from exchange.mpi.models import ReviewItem, ReviewStatus
from exchange.studies.models import Study
from hospitals.services import account_create
from tests.conftest import PASSWORD, api
from tests.dicom import RIC_WANG, ct_dataset, multipart, to_bytes

pytestmark = pytest.mark.django_db
TEST_KEY = "8BTvCw77-vCIG6ByHmRDKVolGfLaS6wCINJfHq_2X6I="
PHONE = "13812345678"


@pytest.fixture(autouse=True)
def _mpi_settings(settings):
    if not settings.EXCHANGE_ENCRYPTION_KEYS:
        settings.EXCHANGE_ENCRYPTION_KEYS = [TEST_KEY]
    settings.MPI_LINK_THRESHOLD = matching.DEFAULT_LINK_THRESHOLD
    settings.MPI_REVIEW_THRESHOLD = matching.DEFAULT_REVIEW_THRESHOLD


def stow(user, ds) -> Study:
    body, ctype = multipart([to_bytes(ds)])
    assert api(user).generic("POST", "/dicomweb/studies", body, content_type=ctype).status_code == 200
    return Study.objects.get(study_instance_uid=ds.StudyInstanceUID)


@pytest.fixture
def pair(ingest_a, ingest_b):
    """Hospital B knew Liu Xiaoming; hospital A registers 'Liu Xiaomin' (a typo): review band."""
    candidate = ct_dataset(patient_id="C1-5", name="Liu^Xiaoming=刘^晓明", birth_date="19750505", ric=RIC_WANG)
    candidate.PatientTelephoneNumbers = PHONE
    old = stow(ingest_b, candidate)
    new = stow(ingest_a, ct_dataset(patient_id="PPH-5", name="Liu^Xiaomin", birth_date="19750505"))
    return old, new, ReviewItem.objects.get()


def login(user) -> Client:
    client = Client(enforce_csrf_checks=True)
    assert client.login(username=user.username, password=PASSWORD)
    return client


def test_review_page_shows_both_records_side_by_side(pair, admin_a):
    old, new, item = pair
    client = login(admin_a)
    listing = client.get("/mpi/review/")
    assert listing.status_code == 200
    assert f"/mpi/review/{item.pk}/" in listing.content.decode()
    page = client.get(f"/mpi/review/{item.pk}/")
    assert page.status_code == 200
    html = page.content.decode()
    for text in ("刘^晓明", "Liu^Xiaoming", "Liu^Xiaomin", "PPH-5", "C1-5", "1975-05-05", "First City Hospital",
                 "Provincial People&#x27;s Hospital", "1101**********4514", "138******78",
                 f"{item.breakdown['name']:.1f}", f"{item.breakdown['birth_date']:.1f}", "Accept", "Reject"):
        assert text in html, text
    assert RIC_WANG not in html and PHONE not in html
    views = AuditEvent.objects.filter(actor=admin_a)
    assert views.filter(event=Event.QUERY, details__page="mpi-review").exists()
    assert views.filter(event=Event.PATIENT_RECORD, details__page="mpi-review", details__review=item.pk).exists()


def test_accept_through_the_web_form_links_and_studies_follow(pair, admin_a):
    old, new, item = pair
    client = login(admin_a)
    client.get(f"/mpi/review/{item.pk}/")
    token = client.cookies["csrftoken"].value
    refused = client.post(f"/mpi/review/{item.pk}/", {"action": "accept"})
    assert refused.status_code == 403  # no CSRF token
    response = client.post(f"/mpi/review/{item.pk}/", {"action": "accept", "comment": "same person, typo",
                                                       "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    item.refresh_from_db()
    new.refresh_from_db()
    assert item.status == ReviewStatus.ACCEPTED and item.comment == "same person, typo" and item.decided_by == admin_a
    assert new.patient_id == old.patient_id
    assert AuditEvent.objects.filter(event=Event.PATIENT_RECORD, details__action="review_accept", actor=admin_a).exists()
    page = client.get(f"/mpi/review/{item.pk}/").content.decode()
    assert "same person, typo" in page and 'value="accept"' not in page


def test_reject_through_the_web_form_keeps_them_apart(pair, admin_a):
    old, new, item = pair
    client = login(admin_a)
    client.get(f"/mpi/review/{item.pk}/")
    client.post(f"/mpi/review/{item.pk}/", {"action": "reject", "csrfmiddlewaretoken": client.cookies["csrftoken"].value})
    item.refresh_from_db()
    new.refresh_from_db()
    assert item.status == ReviewStatus.REJECTED and new.patient_id != old.patient_id
    listing = client.get("/mpi/review/").content.decode()
    assert f"/mpi/review/{item.pk}/" not in listing
    assert f"/mpi/review/{item.pk}/" in client.get("/mpi/review/?status=rejected").content.decode()


def test_who_may_see_and_decide(pair, clinician_a, hospital_b, hospital_a, django_user_model):
    _, _, item = pair
    assert login(clinician_a).get("/mpi/review/").status_code == 403
    admin_b = account_create(username="admin_b", role="hospital_admin", password=PASSWORD, hospital=hospital_b)
    # hospital B's admin sees the item (its patient is the candidate) but does not decide it
    client_b = login(admin_b)
    page = client_b.get(f"/mpi/review/{item.pk}/").content.decode()
    assert 'value="accept"' not in page
    client_b.post(f"/mpi/review/{item.pk}/", {"action": "accept", "csrfmiddlewaretoken": client_b.cookies["csrftoken"].value})
    item.refresh_from_db()
    assert item.status == ReviewStatus.OPEN
    hospital_c = type(hospital_a).objects.create(code="C3", name="Third", assigning_authority="C3-MRN", ae_title="C3")
    admin_c = account_create(username="admin_c", role="hospital_admin", password=PASSWORD, hospital=hospital_c)
    assert login(admin_c).get(f"/mpi/review/{item.pk}/").status_code == 404
    steward = django_user_model.objects.create_user("steward", password=PASSWORD, is_staff=True)
    assert 'value="accept"' in login(steward).get(f"/mpi/review/{item.pk}/").content.decode()
    assert login(steward).get("/mpi/review/").status_code == 200
    assert Client().get("/mpi/review/").status_code == 302  # to the login page
    assert re.search(r"login", Client().get("/mpi/review/")["Location"])
