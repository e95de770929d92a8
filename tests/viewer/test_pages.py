"""Pages for people: login, search, study and image pages, the admin's ingest summary."""

import pytest
from django.test import Client

from audit.models import AuditEvent, Event
from exchange.studies.models import Series, Study
from tests.conftest import PASSWORD, api
from tests.dicom import ct_dataset, multipart, to_bytes

pytestmark = pytest.mark.django_db


def stow(user, *datasets):
    body, ctype = multipart([to_bytes(d) for d in datasets])
    assert api(user).generic("POST", "/dicomweb/studies", body, content_type=ctype).status_code == 200


def login(user) -> Client:
    client = Client()
    response = client.post("/accounts/login/", {"username": user.username, "password": PASSWORD})
    assert response.status_code == 302
    return client


@pytest.fixture
def studies(ingest_a, ingest_b):
    stow(ingest_a, ct_dataset(patient_id="PPH0001"))
    stow(ingest_b, ct_dataset(patient_id="C1-0001", name="Li^Na=李^娜"))
    return Study.objects.get(hospital__code="PPH"), Study.objects.get(hospital__code="CITY1")


def test_login_required_and_wrong_password(db, clinician_a):
    assert Client().get("/search/").status_code == 302
    response = Client().post("/accounts/login/", {"username": clinician_a.username, "password": "wrong"})
    assert response.status_code == 200 and b"did not match" in response.content


def test_clinician_searches_by_hanzi_or_pinyin_and_sees_own_hospital_only(studies, clinician_a):
    client = login(clinician_a)
    for name in ("王", "wang", "Wang XiaoDong", "王小东"):
        page = client.get("/search/", {"name": name}).content.decode()
        assert "PPH0001" in page, name
    assert "C1-0001" not in client.get("/search/", {"name": "li"}).content.decode()
    assert AuditEvent.objects.filter(event=Event.QUERY, actor=clinician_a).count() == 5


def test_a_broad_search_counts_only_up_to_the_cap_and_says_so(ingest_a, clinician_a, monkeypatch):
    from exchange.viewer.views import CappedPaginator

    for n in range(3):
        stow(ingest_a, ct_dataset(patient_id=f"PPH000{n}"))
    client = login(clinician_a)
    assert "3 studies you may see." in client.get("/search/", {"name": "wang"}).content.decode()
    monkeypatch.setattr(CappedPaginator, "cap", 2)
    page = client.get("/search/", {"name": "wang"}).content.decode()
    assert "More than 2 studies you may see; the newest 2 are listed." in page and "Page 1 of 1" in page
    assert page.count('href="/studies/') == 2  # the newest two rows, one page
    event = AuditEvent.objects.filter(event=Event.QUERY, actor=clinician_a).latest("id")
    assert (event.details["results"], event.details["more"]) == (2, True)


def test_study_page_and_image_pager(studies, clinician_a):
    study, _ = studies
    client = login(clinician_a)
    page = client.get(f"/studies/{study.pk}/").content.decode()
    assert "王 小东" in page and "/rendered?viewport=256,256" in page
    series = Series.objects.get(study=study)
    page = client.get(f"/studies/{study.pk}/series/{series.pk}/", {"window": "-600,1500"}).content.decode()
    assert "Image 1 of 1" in page and "window=-600%2C1500" in page
    assert AuditEvent.objects.filter(event=Event.INSTANCES_ACCESSED, actor=clinician_a, study=study).exists()


def test_other_hospitals_study_page_is_refused_by_number(studies, clinician_a):
    _, other = studies
    response = login(clinician_a).get(f"/studies/{other.pk}/")
    assert response.status_code == 403
    assert AuditEvent.objects.filter(event=Event.ACCESS_DENIED, actor=clinician_a, study=other).exists()


def test_text_from_dicom_is_escaped(ingest_a, clinician_a):
    ds = ct_dataset(patient_id="<b>x</b>")
    ds.StudyDescription = "<script>alert(1)</script>"
    stow(ingest_a, ds)
    client = login(clinician_a)
    page = client.get("/search/", {"patient_id": "<b>x</b>"}).content.decode()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>x</b>" not in page
    study = Study.objects.get()
    assert "<script>" not in client.get(f"/studies/{study.pk}/").content.decode()


def test_admin_sees_ingest_summary(studies, admin_a):
    page = login(admin_a).get("/hospital/ingest/").content.decode()
    assert "Provincial People" in page and "STOW-RS" in page
    assert "<b>1</b>studies" in page.replace("\n", "").replace(" ", "") or ">1</b>studies" in page.replace(" ", "")


def test_ingest_summary_is_for_admins_only(studies, clinician_a):
    assert login(clinician_a).get("/hospital/ingest/").status_code == 403


def test_regulator_overview_shows_no_patient_data(studies, regulator):
    page = login(regulator).get("/", follow=True).content.decode()
    assert "Network overview" in page and "PPH0001" not in page and "王" not in page


def test_logins_are_audited(db, clinician_a):
    login(clinician_a)
    Client().post("/accounts/login/", {"username": clinician_a.username, "password": "nope"})
    events = AuditEvent.objects.filter(event=Event.USER_AUTHENTICATION).order_by("id")
    assert [(e.outcome, e.actor_id) for e in events] == [("0", clinician_a.pk), ("4", None)]
    assert "nope" not in str(events[1].details)
