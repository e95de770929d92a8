"""The regulator's pages (audit/views.py): role gate, trail search, patient history, break-glass
review queue, dashboard figures and reports. Each page is itself audited."""

import csv
import io
import itertools
import re
import uuid
from contextlib import contextmanager
from datetime import date, datetime
from unittest import mock
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings
from django.test import Client

from audit import record, reports
from audit.models import AuditEvent, BreakGlassReview, Event, Outcome, ReviewStatus
from exchange.mpi.models import Patient, PatientIdentifier
from exchange.studies.models import Study
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

_uids = itertools.count(1)


# --- helpers shared by tests/audit/test_*.py and tests/browser -----------------------------------

def local(*args) -> datetime:
    """A local wall-clock time in settings.TIME_ZONE."""
    return datetime(*args, tzinfo=ZoneInfo(settings.TIME_ZONE))


@contextmanager
def at(when: datetime):
    """record() stamps events with timezone.now(): pin it to ``when``."""
    with mock.patch("django.utils.timezone.now", return_value=when):
        yield


def make_patient(name="Wang^XiaoDong", ideographic="王^小东") -> Patient:
    return Patient.objects.create(name_alphabetic=name, name_ideographic=ideographic)


def make_study(hospital, patient: Patient | None = None, description="CT chest") -> Study:
    patient = patient or make_patient()
    identifier, _ = PatientIdentifier.objects.get_or_create(
        patient=patient, hospital=hospital, defaults={"local_id": f"L{next(_uids)}"})
    n = next(_uids)
    return Study.objects.create(hospital=hospital, patient=patient, identifier=identifier,
                                study_instance_uid=f"2.25.{uuid.uuid4().int}", dicom_patient_id=identifier.local_id,
                                description=description, modalities="CT", study_date=date(2026, 1, n % 28 + 1))


def view(actor, study, when=None, event=Event.INSTANCES_ACCESSED, outcome=Outcome.SUCCESS, basis="consent", **details):
    def write():
        return record(event, actor, outcome, study=study, purpose="treatment", basis=basis,
                      details=details or {"path": f"/studies/{study.pk}/"})
    if when is None:
        return write()
    with at(when):
        return write()


def login(user) -> Client:
    client = Client()
    assert client.post("/accounts/login/", {"username": user.username, "password": PASSWORD}).status_code == 302
    return client


def seqs(html: str) -> list[int]:
    """The seq numbers of the event rows on a page, in page order."""
    return [int(s) for s in re.findall(r'<tr data-seq="(\d+)"', html)]


# --- role gate -----------------------------------------------------------------------------------

def page_urls(patient) -> list[str]:
    return ["/audit/", "/audit/?format=csv", "/audit/?format=print", "/audit/events/", "/audit/events/?format=csv",
            f"/audit/patients/{patient.enterprise_id}/", "/audit/break-glass/", "/audit/export",
            "/audit/export?format=fhir"]


def test_anonymous_is_sent_to_login(hospital_a):
    patient = make_study(hospital_a).patient
    for url in page_urls(patient):
        response = Client().get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), url


@pytest.mark.parametrize("who", ["clinician_a", "admin_a", "ingest_a"])
def test_other_roles_are_refused_and_the_attempt_is_audited(request, who, hospital_a):
    user = request.getfixturevalue(who)
    patient = make_study(hospital_a).patient
    client = login(user)
    for url in page_urls(patient):
        before = AuditEvent.objects.filter(event=Event.ACCESS_DENIED, actor=user).count()
        response = client.get(url)
        assert response.status_code == 403, url
        assert AuditEvent.objects.filter(event=Event.ACCESS_DENIED, actor=user).count() == before + 1, url
    assert client.post("/audit/break-glass/", {"event": 1, "status": "acknowledged"}).status_code == 403
    assert not BreakGlassReview.objects.exists()


def test_patient_account_is_refused(hospital_a):
    from tests.conftest import make_patient_user

    study = make_study(hospital_a)
    user = make_patient_user(study.patient)
    assert login(user).get(f"/audit/patients/{study.patient.enterprise_id}/").status_code == 403


def test_regulator_pages_are_each_audited(regulator, hospital_a):
    patient = make_study(hospital_a).patient
    client = login(regulator)
    for url in page_urls(patient):
        before = AuditEvent.objects.count()
        response = client.get(url)
        assert response.status_code == 200, url
        if response.streaming:
            b"".join(response.streaming_content)
        mine = AuditEvent.objects.filter(actor=regulator).order_by("-seq").first()
        assert AuditEvent.objects.count() > before and mine.seq > before, url
        assert mine.event in (Event.QUERY, Event.EXPORT) and mine.purpose == "oversight", url
        assert mine.details["page"].startswith("audit_"), url
    history = AuditEvent.objects.filter(actor=regulator, details__page="audit_patient_history").get()
    assert history.patient == patient


def test_nav_shows_audit_link_to_regulators_only(regulator, clinician_a):
    assert 'href="/audit/"' in login(regulator).get("/").content.decode()
    assert 'href="/audit/"' not in login(clinician_a).get("/search/").content.decode()


# --- trail search ----------------------------------------------------------------------------------

@pytest.fixture
def trail(hospital_a, hospital_b, clinician_a, clinician_b):
    """A small trail: two patients at A, views from A and B on different days, a denial."""
    wang = make_study(hospital_a)
    li = make_study(hospital_a, make_patient("Li^Na", "李^娜"))
    events = {
        "a_wang": view(clinician_a, wang, local(2026, 3, 1, 9)),
        "b_wang": view(clinician_b, wang, local(2026, 3, 2, 10)),
        "b_li_denied": view(clinician_b, li, local(2026, 3, 3, 11), event=Event.ACCESS_DENIED,
                            outcome=Outcome.MINOR_FAILURE, basis="", reason="no consent"),
        "a_li": view(clinician_a, li, local(2026, 3, 10, 12)),
    }
    return wang, li, events


def test_search_filters(trail, regulator, hospital_b):
    wang, li, e = trail
    client = login(regulator)

    def found(**params) -> list[int]:
        response = client.get("/audit/events/", params)
        assert response.status_code == 200
        return seqs(response.content.decode())

    assert found(patient=str(wang.patient.enterprise_id)) == [e["b_wang"].seq, e["a_wang"].seq]
    assert found(actor="dr_b") == [e["b_li_denied"].seq, e["b_wang"].seq]
    assert found(actor="DR_B", event=Event.ACCESS_DENIED) == [e["b_li_denied"].seq]
    assert found(outcome=Outcome.MINOR_FAILURE, date_from="2026-03-01") == [e["b_li_denied"].seq]
    # Hospital B acted in these; none of its own studies were touched.
    assert found(hospital="CITY1", date_from="2026-03-01") == [e["b_li_denied"].seq, e["b_wang"].seq]
    # Local calendar days, both ends included.
    assert found(date_from="2026-03-02", date_to="2026-03-03") == [e["b_li_denied"].seq, e["b_wang"].seq]
    assert found(patient=str(li.patient.enterprise_id), date_to="2026-03-09") == [e["b_li_denied"].seq]


def test_search_rows_show_who_what_whom_and_link_to_history(trail, regulator):
    wang, _, e = trail
    page = login(regulator).get("/audit/events/", {"actor": "dr_b", "event": Event.INSTANCES_ACCESSED}).content.decode()
    row = page[page.index(f'<tr data-seq="{e["b_wang"].seq}"'):]
    row = row[:row.index("</tr>")]
    for text in (str(e["b_wang"].seq), "2026-03-02 10:00:00", "DICOM instances accessed", "Success", "dr_b", "CITY1",
                 "王 小东 / Wang XiaoDong", "PPH · CT chest", "treatment", "consent",
                 f'href="/audit/patients/{wang.patient.enterprise_id}/"'):
        assert text in row, text


def test_search_of_a_patient_is_audited_with_the_patient(trail, regulator):
    wang, _, _ = trail
    login(regulator).get("/audit/events/", {"patient": str(wang.patient.enterprise_id)})
    query = AuditEvent.objects.filter(actor=regulator, event=Event.QUERY).latest("seq")
    assert query.patient == wang.patient
    assert query.details["filters"] == {"patient": str(wang.patient.enterprise_id)}
    assert query.details["results"] == 2


def test_bad_search_input_is_a_400_not_an_error(regulator, db):
    client = login(regulator)
    assert client.get("/audit/events/", {"patient": "not-a-uuid"}).status_code == 400
    assert client.get("/audit/events/", {"patient": str(uuid.uuid4())}).status_code == 400
    assert client.get("/audit/events/", {"date_from": "2026-03-05", "date_to": "2026-03-01"}).status_code == 400
    assert client.get("/audit/events/", {"event": "nonsense"}).status_code == 400


def test_search_is_paginated_with_a_bounded_number_of_queries(regulator, clinician_b, hospital_a,
                                                              django_assert_max_num_queries):
    studies = [make_study(hospital_a) for _ in range(5)]
    for i in range(60):
        view(clinician_b, studies[i % 5])
    client = login(regulator)
    client.get("/audit/events/", {"actor": "dr_b"})  # warm up the session and caches
    with django_assert_max_num_queries(14):
        first = client.get("/audit/events/", {"actor": "dr_b"}).content.decode()
    second = client.get("/audit/events/", {"actor": "dr_b", "page": 2}).content.decode()
    assert len(seqs(first)) == 50 and len(seqs(second)) == 10
    assert "Page 1 of 2" in first and "actor=dr_b&amp;page=2" in first


# --- patient history ---------------------------------------------------------------------------------

def test_patient_history_lists_every_event_about_the_patient_only(trail, regulator):
    wang, li, e = trail
    page = login(regulator).get(f"/audit/patients/{wang.patient.enterprise_id}/").content.decode()
    assert seqs(page) == [e["b_wang"].seq, e["a_wang"].seq]
    assert "王 小东 / Wang XiaoDong" in page and str(wang.patient.enterprise_id) in page
    # Later visits show the regulator's own earlier look at the history (it is about this patient).
    page = login(regulator).get(f"/audit/patients/{wang.patient.enterprise_id}/").content.decode()
    assert len(seqs(page)) == 3 and "audit_patient_history" not in page


def test_patient_history_of_an_unknown_patient_is_404(regulator, db):
    assert login(regulator).get(f"/audit/patients/{uuid.uuid4()}/").status_code == 404


# --- break-glass review queue ---------------------------------------------------------------------------

@pytest.fixture
def emergency(hospital_a, clinician_b):
    study = make_study(hospital_a)
    return record(Event.BREAK_GLASS, clinician_b, study=study, purpose="emergency", basis="break_glass",
                  details={"reason": "unconscious patient in ED"})


def test_break_glass_event_is_acknowledged_and_the_review_audited(emergency, regulator):
    client = login(regulator)
    page = client.get("/audit/break-glass/").content.decode()
    assert "unconscious patient in ED" in page and f'<tr data-seq="{emergency.seq}"' in page

    response = client.post("/audit/break-glass/", {"event": emergency.pk, "status": "acknowledged",
                                                   "comment": "ED admission confirmed"})
    assert response.status_code == 302

    review = BreakGlassReview.objects.get(event=emergency)
    assert (review.status, review.comment, review.reviewer) == (ReviewStatus.ACKNOWLEDGED, "ED admission confirmed",
                                                               regulator)
    audited = AuditEvent.objects.filter(event=Event.ADMIN_CHANGE, actor=regulator).get()
    assert audited.details == {"action": "break_glass_review", "event_seq": emergency.seq, "event_id": emergency.pk,
                               "status": "acknowledged", "comment": "ED admission confirmed"}
    assert audited.patient_id == emergency.patient_id and audited.study_id == emergency.study_id
    page = client.get(response["Location"]).content.decode()
    pending = page[page.index('id="pending"'):page.index('id="reviewed"')]
    reviewed = page[page.index('id="reviewed"'):]
    assert "Nothing awaits review" in pending
    assert f'<tr data-seq="{emergency.seq}"' in reviewed and "Acknowledged" in reviewed and "regulator" in reviewed


def test_flag_needs_a_comment_and_an_event_is_reviewed_once(emergency, regulator):
    client = login(regulator)
    assert client.post("/audit/break-glass/", {"event": emergency.pk, "status": "flagged"}).status_code == 400
    assert not BreakGlassReview.objects.exists()
    assert client.post("/audit/break-glass/", {"event": emergency.pk, "status": "flagged",
                                               "comment": "no ED record"}).status_code == 302
    again = client.post("/audit/break-glass/", {"event": emergency.pk, "status": "acknowledged", "comment": "x"})
    assert again.status_code == 400 and "already been reviewed" in again.content.decode()
    assert BreakGlassReview.objects.get().status == ReviewStatus.FLAGGED
    assert AuditEvent.objects.filter(event=Event.ADMIN_CHANGE, details__action="break_glass_review").count() == 1


def test_only_break_glass_events_can_be_reviewed(trail, regulator):
    _, _, e = trail
    response = login(regulator).post("/audit/break-glass/", {"event": e["a_wang"].pk, "status": "acknowledged"})
    assert response.status_code == 400 and not BreakGlassReview.objects.exists()


def test_review_needs_the_csrf_token(emergency, regulator):
    client = Client(enforce_csrf_checks=True)
    client.force_login(regulator)
    assert client.post("/audit/break-glass/", {"event": emergency.pk, "status": "acknowledged"}).status_code == 403
    assert not BreakGlassReview.objects.exists()


# --- dashboard ---------------------------------------------------------------------------------------------

@pytest.fixture
def network(hospital_a, hospital_b, clinician_a, clinician_b, settings):
    """March 2026: hospital B's clinician opens hospital A's studies three times (two studies), A's
    own clinician views its own study, one denied attempt; April: one break-glass, one more view."""
    settings.AUDIT_PRICE_PER_EXAM = 300.0
    first, second = make_study(hospital_a), make_study(hospital_a)
    view(clinician_b, first, local(2026, 3, 2, 10))
    view(clinician_b, first, local(2026, 3, 5, 10))  # the same study again: still one exam saved
    view(clinician_b, second, local(2026, 3, 9, 10), event=Event.INSTANCES_TRANSFERRED)
    view(clinician_a, first, local(2026, 3, 9, 11))
    view(clinician_a, make_study(hospital_b), local(2026, 3, 20, 11), event=Event.ACCESS_DENIED,
         outcome=Outcome.MINOR_FAILURE)
    with at(local(2026, 4, 1, 8)):
        record(Event.BREAK_GLASS, clinician_b, study=second, purpose="emergency")
    view(clinician_b, second, local(2026, 4, 1, 8, 1))
    return first, second


def test_dashboard_figures(network):
    d = reports.dashboard(date(2026, 1, 1), date(2026, 6, 30))
    march, april = date(2026, 3, 1), date(2026, 4, 1)
    assert d.months == [date(2026, m, 1) for m in range(1, 7)]
    assert d.cross_hospital == {("CITY1", "PPH"): {march: 3, april: 1}}
    assert d.denied == {march: 1}
    assert d.access == {march: 4, april: 1}
    assert d.break_glass == {april: 1}
    assert d.break_glass_rate == 20.0 and d.break_glass_rate_by_month()[april] == 100.0
    # Two studies of A reused by B (the repeat views and April's view of a reused study don't count).
    assert d.reused == {march: 2} and d.reused_total == 2
    assert d.saving == 600.0


def test_dashboard_period_excludes_other_months(network):
    d = reports.dashboard(date(2026, 4, 1), date(2026, 4, 30))
    assert d.cross_hospital == {("CITY1", "PPH"): {date(2026, 4, 1): 1}}
    assert d.reused_total == 0  # first reused in March


def test_month_boundaries_are_local_time(hospital_a, clinician_b):
    # 00:30 on 1 April in Shanghai is still 31 March in UTC.
    view(clinician_b, make_study(hospital_a), local(2026, 4, 1, 0, 30))
    d = reports.dashboard(date(2026, 3, 1), date(2026, 4, 30))
    assert d.cross_hospital == {("CITY1", "PPH"): {date(2026, 4, 1): 1}}


def test_dashboard_page_renders_charts_and_tables(network, regulator):
    page = login(regulator).get("/audit/", {"date_from": "2026-01-01", "date_to": "2026-06-30"}).content.decode()
    assert page.count("<svg") == 4
    assert re.search(r'<rect class="bar"[^>]*data-series="CITY1 → PPH" data-month="2026-03" data-value="3"', page)
    assert re.search(r'data-month="2026-03" data-value="1"', page)  # the denied attempt
    row = page[page.index('<tr data-pair="CITY1→PPH">'):]
    row = row[:row.index("</tr>")]
    assert re.findall(r'<td class="num">(\d*)</td>', row) == ["", "", "3", "1", "", "", "4"]
    assert "¥600" in page and "20.0%" in page


def test_dashboard_csv(network, regulator):
    response = login(regulator).get("/audit/", {"date_from": "2026-01-01", "date_to": "2026-06-30", "format": "csv"})
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert list(rows[0]) == list(reports.CSV_COLUMNS)
    cell = [r for r in rows if r["section"] == "cross_hospital_views" and r["month"] == "2026-03"]
    assert cell == [{"section": "cross_hospital_views", "month": "2026-03", "viewing_hospital": "CITY1",
                     "holding_hospital": "PPH", "actor": "", "value": "3", "detail": ""}]
    totals = {r["section"]: r["value"] for r in rows if r["month"] == "total"}
    assert totals["studies_reused"] == "2" and float(totals["estimated_saving"]) == 600.0
    assert AuditEvent.objects.filter(event=Event.EXPORT, details__page="audit_dashboard").exists()


def test_printable_report(network, regulator):
    response = login(regulator).get("/audit/", {"date_from": "2026-01-01", "date_to": "2026-06-30",
                                                "format": "print"})
    page = response.content.decode()
    assert "Audit report: 2026-01-01 to 2026-06-30" in page and "window.print()" in page
    assert "audit/audit.css" in page and page.count("<svg") == 4


def test_dashboard_with_an_empty_trail_and_bad_period(regulator):
    client = login(regulator)
    assert "No events in this period." in client.get("/audit/").content.decode()
    assert client.get("/audit/", {"date_from": "2026-05-01", "date_to": "2026-01-01"}).status_code == 400
