"""Writes of the consent app: consents, access requests, break-glass, share links, portal login.

Each function takes the acting user as a keyword argument, validates first, and writes its audit
event in the same transaction (docs/decisions/0011-consent.md).
"""

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.hashers import check_password, make_password
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from audit import record
from audit.models import Event, Outcome
from consent import policy, sms
from consent.models import (
    AccessRequest,
    Action,
    BreakGlass,
    BreakGlassReason,
    Consent,
    ConsentVersion,
    OtpCode,
    RequestStatus,
    Scope,
    ShareLink,
)
from hospitals.models import Profile, Role

def _iso(value):
    return value.isoformat() if value else None


# --- Consents ------------------------------------------------------------------------------


def _snapshot(consent: Consent) -> dict:
    return {
        "action": consent.action, "scope": consent.scope, "hospital": consent.hospital_id,
        "clinician": consent.clinician_id, "modalities": consent.modalities,
        "date_from": consent.date_from.isoformat() if consent.date_from else None,
        "date_to": consent.date_to.isoformat() if consent.date_to else None,
        "study": consent.study_id,
        "expires_at": consent.expires_at.isoformat() if consent.expires_at else None,
        "revoked_at": consent.revoked_at.isoformat() if consent.revoked_at else None,
    }


def _version_append(consent: Consent, change: str, actor) -> ConsentVersion:
    last = consent.versions.order_by("-version").values_list("version", flat=True).first() or 0
    return ConsentVersion.objects.create(consent=consent, version=last + 1, change=change,
                                         snapshot=_snapshot(consent), actor=actor)


def _require_patient_self(actor, patient) -> None:
    profile = getattr(actor, "profile", None)
    if profile is None or profile.role != Role.PATIENT or profile.patient_id != patient.pk:
        raise PermissionDenied("only the patient manages their consents")


def consent_grant(*, actor, patient, scope: str, hospital=None, clinician=None, modalities: str = "",
                  date_from=None, date_to=None, study=None, expires_at=None, action: str = Action.PERMIT,
                  change: str = "granted") -> Consent:
    """Record a patient's directive (PERMIT, or DENY under opt-out)."""
    _require_patient_self(actor, patient)
    if scope not in Scope.values or action not in Action.values:
        raise ValidationError("unknown scope or action")
    if scope == Scope.HOSPITAL and hospital is None:
        raise ValidationError("choose the hospital")
    if scope == Scope.CLINICIAN:
        profile = getattr(clinician, "profile", None)
        if profile is None or profile.role != Role.CLINICIAN:
            raise ValidationError("choose a clinician")
    if study is not None and study.patient_id != patient.pk:
        raise ValidationError("not your study")
    if date_from and date_to and date_from > date_to:
        raise ValidationError("the start date is after the end date")
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError("the expiry is in the past")
    modalities = "\\".join(sorted({m.strip().upper() for m in modalities.replace(",", "\\").split("\\") if m.strip()}))
    consent = Consent(patient=patient, action=action, scope=scope,
                      hospital=hospital if scope == Scope.HOSPITAL else None,
                      clinician=clinician if scope == Scope.CLINICIAN else None,
                      modalities=modalities, date_from=date_from, date_to=date_to, study=study,
                      expires_at=expires_at, created_by=actor)
    with transaction.atomic():
        consent.save()
        _version_append(consent, change, actor)
        record(Event.CONSENT_CHANGE, actor, patient=patient, purpose=policy.Purpose.PATIENT_SELF,
               basis=policy.Basis.PATIENT_SELF,
               details={"action": change, "consent": consent.pk, "directive": action, "scope": scope,
                        "hospital": consent.hospital_id, "clinician": consent.clinician_id,
                        "expires_at": _iso(consent.expires_at)})
    return consent


def consent_revoke(*, actor, consent: Consent) -> Consent:
    """Withdraw a consent: effective from the next request (the policy reads it every time)."""
    _require_patient_self(actor, consent.patient)
    with transaction.atomic():
        locked = Consent.objects.select_for_update().get(pk=consent.pk)
        if locked.revoked_at is not None:
            return locked
        locked.revoked_at = timezone.now()
        locked.revoked_by = actor
        locked.save(update_fields=["revoked_at", "revoked_by"])
        _version_append(locked, "revoked", actor)
        record(Event.CONSENT_CHANGE, actor, patient=locked.patient, purpose=policy.Purpose.PATIENT_SELF,
               basis=policy.Basis.PATIENT_SELF, details={"action": "revoked", "consent": locked.pk})
    return locked


# --- Access requests -----------------------------------------------------------------------


def access_request_create(*, actor, patient, reason: str, study=None) -> AccessRequest:
    profile = getattr(actor, "profile", None)
    if profile is None or profile.role != Role.CLINICIAN:
        raise PermissionDenied("only clinicians request access")
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError("give the reason for the request")
    if study is not None and study.patient_id != patient.pk:
        raise ValidationError("the study is not this patient's")
    with transaction.atomic():
        req = AccessRequest.objects.create(patient=patient, requester=actor, hospital=profile.hospital,
                                           study=study, reason=reason[:2000])
        record(Event.CONSENT_CHANGE, actor, patient=patient, study=study, purpose=policy.Purpose.TREATMENT,
               details={"action": "access_requested", "request": req.pk})
    return req


def access_request_decide(*, actor, request: AccessRequest, approve: bool, expires_at=None) -> AccessRequest:
    """The patient approves (a consent for that clinician, narrowed to the study if one was
    named) or denies."""
    _require_patient_self(actor, request.patient)
    with transaction.atomic():
        req = AccessRequest.objects.select_for_update().get(pk=request.pk)
        if req.status != RequestStatus.PENDING:
            raise ValidationError("this request was already answered")
        if approve:
            req.consent = consent_grant(actor=actor, patient=req.patient, scope=Scope.CLINICIAN,
                                        clinician=req.requester, study=req.study, expires_at=expires_at,
                                        change="approved-request")
        req.status = RequestStatus.APPROVED if approve else RequestStatus.DENIED
        req.decided_at = timezone.now()
        req.save(update_fields=["status", "decided_at", "consent"])
        record(Event.CONSENT_CHANGE, actor, patient=req.patient, purpose=policy.Purpose.PATIENT_SELF,
               details={"action": "access_request_" + req.status, "request": req.pk})
    return req


# --- Break-glass ---------------------------------------------------------------------------


def break_glass_open(*, actor, patient, reason: str, reason_text: str, study=None) -> BreakGlass:
    """Open emergency access to one patient for BREAK_GLASS_HOURS; flagged for the regulator."""
    profile = getattr(actor, "profile", None)
    if profile is None or profile.role != Role.CLINICIAN:
        raise PermissionDenied("only clinicians may break the glass")
    if reason not in BreakGlassReason.values:
        raise ValidationError("choose a reason from the list")
    reason_text = (reason_text or "").strip()
    if len(reason_text) < 10:
        raise ValidationError("describe the emergency (at least 10 characters)")
    now = timezone.now()
    with transaction.atomic():
        glass = BreakGlass.objects.create(actor=actor, hospital=profile.hospital, patient=patient, reason=reason,
                                          reason_text=reason_text[:2000], opened_at=now,
                                          expires_at=now + timedelta(hours=settings.BREAK_GLASS_HOURS))
        row = record(Event.BREAK_GLASS, actor, Outcome.SUCCESS, patient=patient, study=study,
                     purpose=policy.Purpose.TREATMENT, basis=policy.Basis.BREAK_GLASS,
                     details={"flagged": True, "break_glass": glass.pk, "reason": reason,
                              "reason_text": glass.reason_text, "expires_at": _iso(glass.expires_at)})
        glass.audit_event = row
        glass.save(update_fields=["audit_event"])
    return glass


# --- Share links ---------------------------------------------------------------------------


def token_index(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def share_link_create(*, actor, study, hours: int | None = None, pin: str = "") -> tuple[ShareLink, str]:
    """A link to one of the patient's own studies. Returns the link and its token."""
    from exchange.mpi import crypto

    _require_patient_self(actor, study.patient)
    hours = hours or settings.SHARE_LINK_HOURS
    if not 1 <= hours <= 24 * 30:
        raise ValidationError("a share link lasts between 1 hour and 30 days")
    pin = (pin or "").strip()
    if pin and not (pin.isdigit() and 4 <= len(pin) <= 8):
        raise ValidationError("a PIN is 4 to 8 digits")
    token = secrets.token_urlsafe(32)
    with transaction.atomic():
        link = ShareLink.objects.create(patient=study.patient, study=study, token_index=token_index(token),
                                        token_encrypted=crypto.encrypt(token),
                                        pin_hash=make_password(pin) if pin else "",
                                        expires_at=timezone.now() + timedelta(hours=hours), created_by=actor)
        record(Event.CONSENT_CHANGE, actor, patient=study.patient, study=study, purpose=policy.Purpose.PATIENT_SELF,
               details={"action": "share_link_created", "share_link": link.pk, "expires_at": _iso(link.expires_at),
                        "pin": bool(pin)})
    return link, token


def share_link_revoke(*, actor, link: ShareLink) -> ShareLink:
    _require_patient_self(actor, link.patient)
    with transaction.atomic():
        updated = ShareLink.objects.filter(pk=link.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        if updated:
            record(Event.CONSENT_CHANGE, actor, patient=link.patient, study=link.study,
                   purpose=policy.Purpose.PATIENT_SELF, details={"action": "share_link_revoked", "share_link": link.pk})
    link.refresh_from_db()
    return link


def share_link_use_record(link: ShareLink, *, action: str, outcome=Outcome.SUCCESS, **details) -> None:
    """Audit one use (or refused use) of a share link; the patient sees it in their history."""
    with transaction.atomic():
        record(Event.SHARE_LINK_USE, None, outcome, patient=link.patient, study=link.study,
               purpose=policy.Purpose.TREATMENT, basis=policy.Basis.SHARE_LINK if outcome == Outcome.SUCCESS else "",
               details={"share_link": link.pk, "action": action, **details})


def share_link_check_pin(*, link: ShareLink, pin: str) -> bool:
    """Check a PIN; wrong PINs count, and SHARE_LINK_MAX_PIN_ATTEMPTS of them lock the link."""
    if link.state() != "usable":
        share_link_use_record(link, action=f"refused_{link.state()}", outcome=Outcome.MINOR_FAILURE)
        return False
    if check_password(pin or "", link.pin_hash):
        share_link_use_record(link, action="pin_accepted")
        return True
    with transaction.atomic():
        ShareLink.objects.filter(pk=link.pk).update(failed_pin_attempts=F("failed_pin_attempts") + 1)
        link.refresh_from_db()
        locked = link.failed_pin_attempts >= settings.SHARE_LINK_MAX_PIN_ATTEMPTS
        if locked and link.locked_at is None:
            ShareLink.objects.filter(pk=link.pk, locked_at__isnull=True).update(locked_at=timezone.now())
        record(Event.SHARE_LINK_USE, None, Outcome.MINOR_FAILURE, patient=link.patient, study=link.study,
               purpose=policy.Purpose.TREATMENT,
               details={"share_link": link.pk, "action": "wrong_pin", "attempts": link.failed_pin_attempts,
                        "locked": locked})
        if locked:
            record(Event.SECURITY_ALERT, None, Outcome.MINOR_FAILURE, patient=link.patient,
                   details={"share_link": link.pk, "action": "share_link_locked"})
    link.refresh_from_db()
    return False


# --- Portal login (phone + one-time code) ---------------------------------------------------


class OtpRefused(Exception):
    """The message is safe to show: it never says whether a number is registered."""


GENERIC_CODE_ERROR = "That code is not valid. Check the number and code, or ask for a new code."


def phone_index_of(phone: str) -> str | None:
    from exchange.mpi import crypto
    from exchange.mpi.normalize import phone_normalize

    number = phone_normalize(phone)
    return crypto.blind_index(number, domain="phone") if number else None


def _code_hash(row_salt: str, code: str) -> str:
    key = settings.SECRET_KEY.encode()
    return hmac.new(key, f"otp:{row_salt}:{code}".encode(), hashlib.sha256).hexdigest()


def _patients_with_phone(index: str) -> list[int]:
    from exchange.mpi.models import PatientIdentifier

    return sorted(set(PatientIdentifier.objects.filter(phone_index=index).values_list("patient_id", flat=True)))


def otp_send(*, phone: str) -> str:
    """Send a code if the number belongs to exactly one patient. Returns the phone index (kept in
    the session instead of the number). The answer is the same whether or not a code was sent."""
    from exchange.mpi.normalize import phone_normalize

    number = phone_normalize(phone)
    if number is None:
        raise OtpRefused("Enter an 11-digit mobile number.")
    index = phone_index_of(number)
    now = timezone.now()
    with transaction.atomic():
        recent = OtpCode.objects.filter(phone_index=index, created_at__gt=now - timedelta(hours=1)).count()
        if recent >= settings.OTP_MAX_PER_HOUR:
            record(Event.SECURITY_ALERT, None, Outcome.MINOR_FAILURE, details={"action": "otp_rate_limited"})
            raise OtpRefused("Too many codes were requested for this number. Try again in an hour.")
        patients = _patients_with_phone(index)
        code = f"{secrets.randbelow(10**6):06d}"
        salt = secrets.token_hex(8)
        OtpCode.objects.create(phone_index=index, patient_id=patients[0] if len(patients) == 1 else None,
                               code_hash=f"{salt}${_code_hash(salt, code)}", created_at=now,
                               expires_at=now + timedelta(seconds=settings.OTP_TTL_SECONDS))
        if len(patients) == 1:
            transaction.on_commit(lambda: sms.send(number, f"your code is {code}"))
    return index


def otp_verify(*, phone_index: str, code: str):
    """The patient account for a correct, fresh code (created on first login); else OtpRefused.

    Refusals are decided inside the transaction and raised after it commits, so the attempt
    count and the audit row of a wrong code are kept (raising inside would roll them back)."""
    now = timezone.now()
    code = (code or "").strip()
    user = None
    with transaction.atomic():
        row = (OtpCode.objects.select_for_update().filter(phone_index=phone_index, used_at__isnull=True)
               .order_by("-created_at", "-id").first())
        if row is None or row.expires_at <= now or row.attempts >= settings.OTP_MAX_ATTEMPTS:
            why = "no usable code"
        else:
            OtpCode.objects.filter(pk=row.pk).update(attempts=F("attempts") + 1)
            salt, digest = row.code_hash.split("$", 1)
            if row.patient_id is None or not hmac.compare_digest(digest, _code_hash(salt, code)):
                why = "wrong code"
            else:
                why = ""
                OtpCode.objects.filter(pk=row.pk).update(used_at=now)
                user = _patient_account(row.patient)
        if why:
            record(Event.USER_AUTHENTICATION, None, Outcome.MINOR_FAILURE, details={"action": "portal_login", "why": why})
        else:
            record(Event.USER_AUTHENTICATION, user, patient=row.patient, details={"action": "portal_login"})
    if user is None:
        raise OtpRefused(GENERIC_CODE_ERROR)
    return user


def _patient_account(patient):
    from hospitals.services import account_create

    profile = Profile.objects.filter(role=Role.PATIENT, patient=patient).select_related("user").order_by("id").first()
    if profile is not None:
        return profile.user
    return account_create(username=f"patient-{patient.enterprise_id.hex[:12]}", role=Role.PATIENT, password=None,
                          patient=patient)
