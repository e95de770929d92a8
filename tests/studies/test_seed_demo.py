"""seed_demo: the synthetic province a newcomer sees with `make demo`."""

import io

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command

from audit.models import AuditEvent, Event
from audit.verify import verify_chain
from consent import policy
from exchange.studies.models import Study

pytestmark = pytest.mark.django_db


def test_seed_demo_builds_a_small_province_once_and_prints_the_accounts():
    out = io.StringIO()
    call_command("seed_demo", "--persons", "6", "--ct-slices", "2", "--ct-size", "32", stdout=out)
    text = out.getvalue()
    for username in ("dr_pph", "dr_city", "admin_pph", "gateway_pph", "regulator", "patient"):
        assert f"user {username}" in text
    assert "patient portal  /me/ — phone 1" in text and "Authorization: Token " in text
    assert authenticate(username="dr_pph", password="demo-clinician-pph") is not None

    # The demo patient is one enterprise patient across hospitals and granted First City access.
    patient_user = authenticate(username="patient", password="demo-patient-01")
    dr_city = authenticate(username="dr_city", password="demo-clinician-city")
    own = Study.objects.filter(patient=patient_user.profile.patient)
    assert own.values("hospital").distinct().count() >= 2
    pph_study = own.filter(hospital__code="PPH").first() or own.exclude(hospital__code="CITY1").first()
    assert policy.decide(dr_city, pph_study.patient, policy.Purpose.TREATMENT, study=pph_study).allowed
    assert AuditEvent.objects.filter(event=Event.BREAK_GLASS, actor=dr_city).count() == 1
    assert verify_chain().ok

    again = io.StringIO()
    call_command("seed_demo", stdout=again)
    assert "already seeded" in again.getvalue()
    assert AuditEvent.objects.filter(event=Event.BREAK_GLASS).count() == 1
