"""Anomaly flags (audit/anomalies.py): flagged on constructed misuse, quiet on normal work."""

from datetime import date, timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured

from audit import anomalies, record, reports
from audit.anomalies import FlagKind
from audit.models import Event, Outcome
from audit.selectors import day_start
from tests.audit.test_pages import at, local, login, make_patient, make_study, view

pytestmark = pytest.mark.django_db

MARCH = (day_start(date(2026, 3, 1)), day_start(date(2026, 4, 1)))


# --- many unrelated patients --------------------------------------------------------------------------

def open_patients(actor, hospital, n, day, first_hour=9):
    """``actor`` opens one study of each of ``n`` new patients of ``hospital`` on ``day``."""
    for i in range(n):
        when = local(day.year, day.month, day.day, first_hour + i // 60, i % 60)
        view(actor, make_study(hospital, make_patient(f"P{i}^Test", "")), when)


def test_many_unrelated_patients_in_a_day_is_flagged(hospital_a, clinician_b):
    open_patients(clinician_b, hospital_a, anomalies.MANY_PATIENTS_PER_DAY + 1, date(2026, 3, 4))
    [flag] = anomalies.many_patients(*MARCH)
    assert (flag.kind, flag.actor, flag.hospital, flag.when, flag.count) == (
        FlagKind.MANY_PATIENTS, "dr_b", "CITY1", date(2026, 3, 4), anomalies.MANY_PATIENTS_PER_DAY + 1)


def test_denied_attempts_count_as_opening(hospital_a, clinician_b):
    for i in range(anomalies.MANY_PATIENTS_PER_DAY + 1):
        view(clinician_b, make_study(hospital_a), local(2026, 3, 4, 9, i), event=Event.ACCESS_DENIED,
             outcome=Outcome.MINOR_FAILURE)
    assert [f.actor for f in anomalies.many_patients(*MARCH)] == ["dr_b"]


def test_normal_work_is_not_flagged(hospital_a, hospital_b, clinician_a, clinician_b):
    # At the threshold, not over it.
    open_patients(clinician_b, hospital_a, anomalies.MANY_PATIENTS_PER_DAY, date(2026, 3, 4))
    # Spread over two days.
    open_patients(clinician_b, hospital_a, 15, date(2026, 3, 5))
    open_patients(clinician_b, hospital_a, 15, date(2026, 3, 6))
    # A radiologist reading thirty of her own hospital's patients.
    open_patients(clinician_a, hospital_a, 30, date(2026, 3, 4))
    # One patient opened many times.
    study = make_study(hospital_a)
    for i in range(40):
        view(clinician_b, study, local(2026, 3, 7, 9, i))
    assert anomalies.many_patients(*MARCH) == []


def test_a_local_day_is_one_day(hospital_a, clinician_b):
    # 23:00-00:40 spans two local days: 11 + 10 patients, never 21 in one.
    for i in range(21):
        when = local(2026, 3, 4, 23, 0) + timedelta(minutes=5 * i)
        view(clinician_b, make_study(hospital_a), when)
    assert anomalies.many_patients(*MARCH) == []


# --- unusual hours -----------------------------------------------------------------------------------------

def test_unusual_hours_setting():
    assert anomalies.unusual_hours("0-6") == frozenset(range(6))
    assert anomalies.unusual_hours("22-6") == frozenset({22, 23, 0, 1, 2, 3, 4, 5})
    assert anomalies.unusual_hours("22-24, 3") == frozenset({22, 23, 3})
    assert anomalies.unusual_hours("") == frozenset()
    for bad in ("night", "0-25", "7-x"):
        with pytest.raises(ImproperlyConfigured):
            anomalies.unusual_hours(bad)


def test_access_at_unusual_local_hours_is_flagged(hospital_a, clinician_a, clinician_b, settings):
    settings.AUDIT_UNUSUAL_HOURS = "0-6"
    study = make_study(hospital_a)
    view(clinician_b, study, local(2026, 3, 4, 2, 30))
    view(clinician_b, study, local(2026, 3, 5, 5, 59))
    view(clinician_b, study, local(2026, 3, 5, 6, 0))  # 06:00 is not in 0-6
    view(clinician_a, study, local(2026, 3, 4, 14, 0))  # 06:00 UTC: local time is what counts
    view(clinician_a, study, local(2026, 3, 4, 3, 0), event=Event.ACCESS_DENIED, outcome=Outcome.MINOR_FAILURE)
    [flag] = anomalies.at_unusual_hours(*MARCH)
    assert (flag.kind, flag.actor, flag.hospital, flag.count) == (FlagKind.UNUSUAL_HOURS, "dr_b", "CITY1", 2)
    assert flag.when == local(2026, 3, 5, 5, 59)


def test_daytime_access_is_not_flagged(hospital_a, clinician_a, settings):
    settings.AUDIT_UNUSUAL_HOURS = "0-6"
    for hour in range(6, 24):
        view(clinician_a, make_study(hospital_a), local(2026, 3, 4, hour))
    assert anomalies.at_unusual_hours(*MARCH) == []
    settings.AUDIT_UNUSUAL_HOURS = ""
    view(clinician_a, make_study(hospital_a), local(2026, 3, 4, 3))
    assert anomalies.at_unusual_hours(*MARCH) == []


# --- access after consent revoked -------------------------------------------------------------------------

def revoke(patient, when, actor=None, action="revoke"):
    with at(when):
        return record(Event.CONSENT_CHANGE, actor, patient=patient, details={"action": action, "hospital": "CITY1"})


@pytest.mark.parametrize("action", ["revoke", "revoked"])  # consent.services.consent_revoke writes "revoked"
def test_access_within_a_day_of_revocation_is_flagged(hospital_a, clinician_b, action):
    study = make_study(hospital_a)
    revoke(study.patient, local(2026, 3, 4, 9), action=action)
    flagged = view(clinician_b, study, local(2026, 3, 4, 20))
    [flag] = anomalies.after_revoke(*MARCH)
    assert (flag.kind, flag.actor, flag.seq, flag.patient) == (
        FlagKind.AFTER_REVOKE, "dr_b", flagged.seq, str(study.patient.enterprise_id))


def test_access_before_or_long_after_revocation_or_by_the_revoker_is_not_flagged(hospital_a, clinician_b):
    from tests.conftest import make_patient_user

    study = make_study(hospital_a)
    patient_user = make_patient_user(study.patient)
    view(clinician_b, study, local(2026, 3, 4, 8))  # before
    revoke(study.patient, local(2026, 3, 4, 9), actor=patient_user)
    view(clinician_b, study, local(2026, 3, 5, 9, 1))  # 24 h and a minute later
    view(patient_user, study, local(2026, 3, 4, 10))  # the patient looking at their own images
    view(clinician_b, study, local(2026, 3, 4, 10), event=Event.ACCESS_DENIED, outcome=Outcome.MINOR_FAILURE)
    view(clinician_b, make_study(hospital_a), local(2026, 3, 4, 10))  # another patient
    # A grant is not a revocation.
    other = make_study(hospital_a)
    revoke(other.patient, local(2026, 3, 4, 9), action="grant")
    view(clinician_b, other, local(2026, 3, 4, 10))
    assert anomalies.after_revoke(*MARCH) == []


# --- on the dashboard ---------------------------------------------------------------------------------------

def test_dashboard_shows_the_flags(hospital_a, clinician_b, regulator, settings):
    settings.AUDIT_UNUSUAL_HOURS = "0-6"
    open_patients(clinician_b, hospital_a, anomalies.MANY_PATIENTS_PER_DAY + 1, date(2026, 3, 4), first_hour=1)
    study = make_study(hospital_a)
    revoke(study.patient, local(2026, 3, 10, 9))
    view(clinician_b, study, local(2026, 3, 10, 11))

    d = reports.dashboard(date(2026, 3, 1), date(2026, 3, 31))
    assert {kind: len(flags) for kind, flags in d.flags.items()} == {
        FlagKind.MANY_PATIENTS: 1, FlagKind.UNUSUAL_HOURS: 1, FlagKind.AFTER_REVOKE: 1}
    page = login(regulator).get("/audit/", {"date_from": "2026-03-01", "date_to": "2026-03-31"}).content.decode()
    many = page[page.index('id="flags-many-patients"'):page.index('id="flags-unusual-hours"')]
    assert "dr_b" in many and "opened 21 unrelated patients" in many
    after = page[page.index('id="flags-after-revoke"'):]
    assert f"/audit/patients/{study.patient.enterprise_id}/" in after
