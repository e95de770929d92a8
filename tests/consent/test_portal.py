"""Patient portal: phone + one-time code login, consents, access requests, access history, FHIR export."""

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from audit.models import AuditEvent, Event
from consent import services, sms
from consent.models import AccessRequest, Consent, OtpCode, Scope
from hospitals.models import Profile
from tests.consent.conftest import PHONE_WANG, login, set_phone
from tests.conftest import api

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch):
    """Codes the console backend would print, captured."""
    codes = []
    monkeypatch.setattr(sms.ConsoleBackend, "send", lambda self, phone, message: codes.append((phone, message[-6:])))
    return codes


def portal_login(client, phone, sent, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/me/login/", {"phone": phone})
    assert response.status_code == 302 and response["Location"] == "/me/login/code/"
    return response


def test_console_backend_masks_the_number(capsys, settings):
    settings.SMS_BACKEND = "console"
    sms.send(PHONE_WANG, "your code is 123456")
    out = capsys.readouterr().out
    assert out.strip() == "SMS to 138****5678: your code is 123456" and PHONE_WANG not in out


def test_login_with_code_creates_the_patient_account_once(world, sent, django_capture_on_commit_callbacks):
    Profile.objects.filter(patient=world.patient).delete()  # first login ever
    client = Client()
    portal_login(client, "138 1234 5678", sent, django_capture_on_commit_callbacks)
    assert len(sent) == 1 and sent[0][0] == PHONE_WANG
    code = sent[0][1]
    row = OtpCode.objects.get()
    assert code not in row.code_hash and row.patient_id == world.patient.pk
    response = client.post("/me/login/code/", {"code": code})
    assert response.status_code == 302 and response["Location"] == "/me/"
    page = client.get("/me/").content.decode()
    assert f"/studies/{world.study.pk}/" in page and f"/studies/{world.study_c.pk}/" in page
    assert f"/studies/{world.study_li.pk}/" not in page
    profile = Profile.objects.get(patient=world.patient)
    assert profile.role == "patient"
    # the code is single use; a second login reuses the account
    assert Client().post("/me/login/code/", {"code": code}).status_code == 302  # no session: back to login
    client2 = Client()
    portal_login(client2, PHONE_WANG, sent, django_capture_on_commit_callbacks)
    client2.post("/me/login/code/", {"code": sent[-1][1]})
    assert Profile.objects.filter(patient=world.patient).count() == 1
    assert AuditEvent.objects.filter(event=Event.USER_AUTHENTICATION, patient=world.patient, outcome="0").count() == 2


def test_unknown_or_shared_number_gets_the_same_answer_and_no_sms(world, sent, django_capture_on_commit_callbacks):
    c1, c2 = Client(), Client()
    portal_login(c1, "13700000000", sent, django_capture_on_commit_callbacks)  # nobody
    set_phone(world.other, PHONE_WANG)  # now two patients share Wang's number
    portal_login(c2, PHONE_WANG, sent, django_capture_on_commit_callbacks)
    assert sent == []
    p1 = c1.get("/me/login/code/").content.decode()
    p2 = c2.get("/me/login/code/").content.decode()
    assert re.sub(r"ending in \d+", "", p1).replace(c1.cookies["csrftoken"].value, "") \
        .count("registered") == re.sub(r"ending in \d+", "", p2).count("registered")
    for c in (c1, c2):
        r = c.post("/me/login/code/", {"code": "000000"})
        assert r.status_code == 200 and services.GENERIC_CODE_ERROR in r.content.decode()


def test_wrong_codes_expiry_and_limits(world, sent, settings, django_capture_on_commit_callbacks):
    settings.OTP_MAX_ATTEMPTS = 3
    settings.OTP_MAX_PER_HOUR = 2
    client = Client()
    portal_login(client, PHONE_WANG, sent, django_capture_on_commit_callbacks)
    good = sent[-1][1]
    bad = "000000" if good != "000000" else "111111"
    for _ in range(3):
        assert services.GENERIC_CODE_ERROR in client.post("/me/login/code/", {"code": bad}).content.decode()
    # attempts are used up: even the right code is refused now (counted in the DB, not in memory)
    assert OtpCode.objects.get().attempts == 3
    assert client.post("/me/login/code/", {"code": good}).status_code == 200
    # expiry
    portal_login(client, PHONE_WANG, sent, django_capture_on_commit_callbacks)
    OtpCode.objects.filter(pk=OtpCode.objects.order_by("-id").first().pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert client.post("/me/login/code/", {"code": sent[-1][1]}).status_code == 200
    # hourly limit per phone
    r = client.post("/me/login/", {"phone": PHONE_WANG})
    assert r.status_code == 200 and "Too many codes" in r.content.decode()
    assert AuditEvent.objects.filter(event=Event.USER_AUTHENTICATION, outcome="4").count() >= 4


def test_grant_and_revoke_in_the_portal_apply_on_the_next_request(world):
    patient, dr = world.actors["patient"], world.actors["clinician_no_consent"]
    portal, doctor = login(patient), login(dr)
    assert doctor.get(f"/studies/{world.study.pk}/").status_code == 403
    r = portal.post("/me/consents/", {"scope": "hospital", "hospital": world.hospital_b.pk, "expires_in_days": "7"})
    assert r.status_code == 302
    consent = Consent.objects.get(hospital=world.hospital_b)
    assert consent.expires_at > timezone.now() + timedelta(days=6)
    assert doctor.get(f"/studies/{world.study.pk}/").status_code == 200
    event = AuditEvent.objects.filter(event=Event.INSTANCES_ACCESSED, actor=dr).last()
    assert event.basis == f"consent:{consent.pk}"
    assert f"/studies/{world.study.pk}/" in doctor.get("/search/", {"name": "wang"}).content.decode()
    assert portal.post(f"/me/consents/{consent.pk}/revoke/").status_code == 302
    assert doctor.get(f"/studies/{world.study.pk}/").status_code == 403
    assert f"/studies/{world.study.pk}/" not in doctor.get("/search/", {"name": "wang"}).content.decode()
    # the other patient cannot revoke Wang's consents
    again = services.consent_grant(actor=patient, patient=world.patient, scope=Scope.NETWORK)
    assert login(world.actors["other_patient"]).post(f"/me/consents/{again.pk}/revoke/").status_code == 404
    assert Consent.objects.get(pk=again.pk).revoked_at is None


def test_access_request_approved_and_denied(world):
    dr = world.actors["clinician_no_consent"]
    doctor, portal = login(dr), login(world.actors["patient"])
    denied = doctor.get(f"/studies/{world.study.pk}/")
    assert denied.status_code == 403 and "Request access" in denied.content.decode()
    r = doctor.post("/consent/request/", {"study": world.study.pk, "reason": "Referral for lung nodule follow-up"})
    assert r.status_code == 302
    req = AccessRequest.objects.get(requester=dr)
    assert "Waiting for the patient" in doctor.get("/search/").content.decode()
    assert "lung nodule" in portal.get("/me/consents/").content.decode()
    portal.post(f"/me/requests/{req.pk}/", {"decision": "approve"})
    req.refresh_from_db()
    assert req.status == "approved" and req.consent.clinician_id == dr.pk and req.consent.study_id == world.study.pk
    assert "Approved" in doctor.get("/search/").content.decode()
    assert doctor.get(f"/studies/{world.study.pk}/").status_code == 200
    assert doctor.get(f"/studies/{world.study_c.pk}/").status_code == 403  # only the study asked for
    doctor.post("/consent/request/", {"study": world.study_c.pk, "reason": "Prior MR"})
    req2 = AccessRequest.objects.get(requester=dr, study=world.study_c)
    portal.post(f"/me/requests/{req2.pk}/", {"decision": "deny"})
    assert "Denied" in doctor.get(f"/studies/{world.study_c.pk}/").content.decode()


def test_request_by_identity_card_number_does_not_reveal_registration(world):
    doctor = login(world.actors["clinician_no_consent"])
    from tests.dicom import RIC_WANG

    a = doctor.post("/consent/request/", {"ric": RIC_WANG, "reason": "ER"})
    b = doctor.post("/consent/request/", {"ric": "11010119900307999X", "reason": "ER"})
    assert a.status_code == b.status_code == 302 and a["Location"] == b["Location"]
    assert AccessRequest.objects.filter(patient=world.patient, study__isnull=True).count() == 1


def test_break_glass_from_the_refused_page(world):
    dr = world.actors["clinician_no_consent"]
    doctor = login(dr)
    r = doctor.post(f"/consent/break-glass/?study={world.study.pk}", {"reason": "life_threatening", "reason_text": "short"})
    assert r.status_code == 200 and doctor.get(f"/studies/{world.study.pk}/").status_code == 403
    r = doctor.post(f"/consent/break-glass/?study={world.study.pk}",
                    {"reason": "life_threatening", "reason_text": "Massive bleeding, prior CT needed"})
    assert r.status_code == 302 and r["Location"] == f"/studies/{world.study.pk}/"
    assert doctor.get(f"/studies/{world.study.pk}/").status_code == 200
    assert doctor.get(f"/studies/{world.study_c.pk}/").status_code == 200  # the whole patient, for the window
    ev = AuditEvent.objects.filter(event=Event.INSTANCES_ACCESSED, actor=dr).last()
    assert ev.basis == "break-glass"
    history = login(world.actors["patient"]).get("/me/history/").content.decode()
    assert "dr_none" in history and "emergency" in history and "Emergency access (break-glass)" in history


def test_access_history_shows_who_when_where_and_basis(world):
    login(world.actors["clinician_consent"]).get(f"/studies/{world.study.pk}/")
    page = login(world.actors["patient"]).get("/me/history/").content.decode()
    consent = Consent.objects.get(clinician=world.actors["clinician_consent"])
    assert "dr_consent" in page and "First City Hospital" in page and f"Your consent #{consent.pk}" in page
    assert "Treatment" in page
    assert "dr_consent" not in login(world.actors["other_patient"]).get("/me/history/").content.decode()


def test_fhir_consent_export(world):
    eid = world.patient.enterprise_id
    r = api(world.actors["patient"]).get(f"/api/consent/Consent?patient={eid}")
    assert r.status_code == 200
    bundle = r.json()
    assert bundle["resourceType"] == "Bundle" and bundle["total"] == 3
    statuses = sorted(e["resource"]["status"] for e in bundle["entry"])
    assert statuses == ["active", "inactive", "inactive"]
    res = bundle["entry"][0]["resource"]
    assert res["resourceType"] == "Consent" and res["patient"]["reference"] == f"Patient/{eid}"
    assert res["provision"]["type"] == "permit" and res["scope"]["coding"][0]["code"] == "patient-privacy"
    assert api(world.actors["regulator"]).get(f"/api/consent/Consent?patient={eid}").status_code == 200
    assert api(world.actors["clinician_source"]).get(f"/api/consent/Consent?patient={eid}").status_code == 403
    assert api(world.actors["other_patient"]).get(f"/api/consent/Consent?patient={eid}").status_code == 403
    assert api().get(f"/api/consent/Consent?patient={eid}").status_code == 401
    unknown = api(world.actors["other_patient"]).get("/api/consent/Consent?patient=00000000-0000-0000-0000-000000000000")
    assert unknown.status_code == 403  # same answer as a refused patient


def test_portal_pages_fit_a_phone(world):
    page = login(world.actors["patient"]).get("/me/consents/").content.decode()
    assert 'name="viewport"' in page and "max-width: 640px" in page
