"""The regulator in a real browser: logs in, sees the dashboard's charts, filters the trail by
patient, reviews a break-glass access (issue #4)."""

import pytest

from audit import record
from audit.models import AuditEvent, BreakGlassReview, Event, Outcome, ReviewStatus
from tests.audit.test_pages import make_patient, make_study, view
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def seeded(hospital_a, hospital_b, clinician_a, clinician_b):
    """Hospital B's clinician views a hospital A study, is denied another, and breaks the glass."""
    wang = make_study(hospital_a)
    li = make_study(hospital_a, make_patient("Li^Na", "李^娜"))
    viewed = view(clinician_b, wang)
    view(clinician_a, wang)
    view(clinician_b, li, event=Event.ACCESS_DENIED, outcome=Outcome.MINOR_FAILURE, basis="", reason="no consent")
    emergency = record(Event.BREAK_GLASS, clinician_b, study=li, purpose="emergency", basis="break_glass",
                       details={"reason": "unconscious patient in ED"})
    return wang, li, viewed, emergency


def test_regulator_dashboard_trail_and_break_glass_review(live_server, page, seeded, regulator, tmp_path):
    wang, li, viewed, emergency = seeded

    # given: the regulator logs in
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", regulator.username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")

    # when: the dashboard opens from the navigation
    page.click("header >> text=Audit")
    page.wait_for_url(f"{live_server.url}/audit/")

    # then: the charts are drawn with the seeded figures
    assert page.locator("svg.chart").count() == 4
    cross = page.locator('svg[data-chart="cross_hospital"] rect.bar')
    assert cross.count() == 1
    assert cross.first.get_attribute("data-series") == "CITY1 → PPH"
    assert cross.first.get_attribute("data-value") == "1"
    assert float(cross.first.get_attribute("height")) > 0
    assert page.locator('svg[data-chart="denied"] rect.bar').first.get_attribute("data-value") == "1"
    assert page.locator('svg[data-chart="break_glass"] rect.bar').first.get_attribute("data-value") == "50.0"
    assert page.locator('[data-figure="studies_reused"] b').inner_text() == "1"
    box = cross.first.bounding_box()
    assert box is not None and box["width"] > 0 and box["height"] > 0  # laid out, not just in the DOM
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # when: the trail is filtered by one patient
    page.click("nav.audit-nav >> text=Audit trail")
    page.fill("input[name=patient]", str(wang.patient.enterprise_id))
    page.click("#event-search button[type=submit]")
    page.wait_for_url("**/audit/events/?**")

    # then: only that patient's events are listed, linked to the patient's history
    rows = page.locator("table.events tbody tr[data-seq]")
    assert rows.count() == 2
    assert sorted(int(rows.nth(i).get_attribute("data-seq")) for i in range(2)) == sorted(
        AuditEvent.objects.filter(patient=wang.patient, event=Event.INSTANCES_ACCESSED).values_list("seq", flat=True))
    assert page.locator(f'tr[data-seq="{viewed.seq}"]').inner_text().count("dr_b") == 1
    assert page.locator(f'a[href="/audit/patients/{li.patient.enterprise_id}/"]').count() == 0
    page.click(f'tr[data-seq="{viewed.seq}"] >> a[href="/audit/patients/{wang.patient.enterprise_id}/"]')
    page.wait_for_url(f"**/audit/patients/{wang.patient.enterprise_id}/")
    assert "Access history" in page.locator("h1").inner_text()

    # when: the break-glass access is acknowledged with a comment
    page.click("nav.audit-nav >> text=Break-glass reviews")
    pending = page.locator(f'#pending tr[data-seq="{emergency.seq}"]')
    assert "unconscious patient in ED" in pending.inner_text()
    pending.locator("textarea[name=comment]").fill("ED admission record checked")
    pending.locator("button[value=acknowledged]").click()
    page.wait_for_url(f"**/audit/break-glass/?reviewed={emergency.seq}")

    # then: it has left the queue and shows as reviewed, by the regulator; the review is audited
    assert page.locator(f'#pending tr[data-seq="{emergency.seq}"]').count() == 0
    reviewed = page.locator(f'#reviewed tr[data-seq="{emergency.seq}"]').inner_text()
    assert "Acknowledged" in reviewed and "ED admission record checked" in reviewed and regulator.username in reviewed
    review = BreakGlassReview.objects.get(event=emergency)
    assert (review.status, review.reviewer_id) == (ReviewStatus.ACKNOWLEDGED, regulator.pk)
    assert AuditEvent.objects.filter(event=Event.ADMIN_CHANGE, actor=regulator,
                                     details__action="break_glass_review").count() == 1
