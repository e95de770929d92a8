"""The one policy decision point: may this actor see this patient's data, for this purpose?

Every read of patient data goes through ``decide`` (one patient or study) or
``visible_studies`` (a search, as a queryset filter). The two state the same rules, once in
Python and once in SQL; tests/consent/test_policy_agreement.py checks them against each other for
every study and actor. Rules (docs/decisions/0011-consent.md):

- hospital staff (clinician, hospital admin, ingest account) see the studies their own hospital
  holds (basis ``own_hospital``);
- a clinician sees another hospital's study of a patient when
  * the patient granted a consent (network, the clinician's hospital, or the clinician by name)
    that is neither expired nor revoked and whose narrowing (modalities, dates, one study) admits
    the study (basis ``consent:<id>``), and no active DENY directive of the patient covers them;
  * or, in an opt-out province (CONSENT_DEFAULT=opt-out), no DENY directive covers them
    (basis ``opt-out-default``);
  * or the clinician opened break-glass for that patient within BREAK_GLASS_HOURS
    (basis ``break-glass``);
- a patient sees their own studies (basis ``patient_self``);
- a share-link bearer sees the one study of a usable link (basis ``share-link``);
- a regulator sees no images; the patient-level record (consents, access history) is open to
  them for oversight (basis ``oversight``);
- anyone else sees nothing;
- nobody sees a study its hospital's archive no longer holds (availability ``withdrawn``, set by
  the federation sync): there is nothing left to show.

Nothing is cached: every call reads the consent rows again, so a revocation applies from the
next request on.
"""

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from hospitals.models import HOSPITAL_ROLES, Role


class Purpose(models.TextChoices):
    TREATMENT = "treatment", "Treatment"
    PATIENT_SELF = "patient_self", "Patient self-access"
    OVERSIGHT = "oversight", "Oversight"


class Basis(models.TextChoices):
    """Fixed bases; a consent's basis is ``consent:<id>`` (Basis.consent)."""

    OWN_HOSPITAL = "own_hospital", "Own hospital"
    PATIENT_SELF = "patient_self", "Patient self-access"
    BREAK_GLASS = "break-glass", "Break-glass (emergency)"
    SHARE_LINK = "share-link", "Share link"
    OVERSIGHT = "oversight", "Oversight"
    OPT_OUT_DEFAULT = "opt-out-default", "Province default (opt-out)"
    NONE = "", "None"

    @staticmethod
    def consent(consent_id: int) -> str:
        return f"consent:{consent_id}"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    basis: str
    reason: str
    valid_until: datetime | None = None

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True)
class ShareLinkBearer:
    """Whoever holds a share link's token (not a platform account). ``pin_verified``: the PIN
    was given in this browser session, or the link has none."""

    link: object
    pin_verified: bool
    is_authenticated = False


def _profile(actor):
    if not getattr(actor, "is_authenticated", False):
        return None
    return getattr(actor, "profile", None)


def purpose_for(actor) -> str:
    if isinstance(actor, ShareLinkBearer):
        return Purpose.TREATMENT
    profile = _profile(actor)
    if profile is None:
        return ""
    if profile.role == Role.PATIENT:
        return Purpose.PATIENT_SELF
    if profile.role == Role.REGULATOR:
        return Purpose.OVERSIGHT
    return Purpose.TREATMENT


def _consents():
    from consent.models import Consent

    return Consent.objects


def _break_glass(actor, patient_id, now):
    from consent.models import BreakGlass

    return (BreakGlass.objects.filter(actor=actor, patient_id=patient_id, expires_at__gt=now)
            .order_by("-expires_at").first())


def _share_link_decision(bearer: ShareLinkBearer, patient, study, now) -> Decision:
    link = bearer.link
    state = link.state(now)
    if state != "usable":
        return Decision(False, Basis.NONE, f"this share link is {state}")
    if not bearer.pin_verified:
        return Decision(False, Basis.NONE, "the PIN of this share link is required")
    if study is None or study.pk != link.study_id or patient.pk != link.patient_id:
        return Decision(False, Basis.NONE, "a share link opens only the one study it was made for")
    return Decision(True, Basis.SHARE_LINK, "the patient shared this study by link", link.expires_at)


def _clinician_decision(actor, profile, patient, study, now) -> Decision:
    glass = _break_glass(actor, patient.pk, now)
    if glass is not None:
        return Decision(True, Basis.BREAK_GLASS, "break-glass access opened for this patient", glass.expires_at)
    covering = _consents().filter(patient=patient).active(now).covering(actor, profile.hospital_id)
    if covering.filter(action="deny").exists():
        return Decision(False, Basis.NONE, "the patient has refused access by other hospitals")
    for consent in covering.filter(action="permit").order_by("id"):
        if study is None and not consent.narrowed or study is not None and consent.covers_study(study):
            return Decision(True, Basis.consent(consent.pk), "the patient consented", consent.expires_at)
    if settings.CONSENT_DEFAULT == "opt-out":
        return Decision(True, Basis.OPT_OUT_DEFAULT, "the patient has not objected (opt-out province)")
    return Decision(False, Basis.NONE, "no consent of the patient covers your access to this study")


def decide(actor, patient, purpose: str, study=None) -> Decision:
    """Decide one read. With ``study``, the decision is about that study's data; without, about
    the patient's record as a whole (a patient-level decision is never broader than the union
    of its study-level ones, except oversight, which opens no images)."""
    from exchange.studies.models import Availability

    now = timezone.now()
    if study is not None and study.availability == Availability.WITHDRAWN:
        return Decision(False, Basis.NONE, "the hospital's archive no longer holds this study")
    if isinstance(actor, ShareLinkBearer):
        return _share_link_decision(actor, patient, study, now)
    profile = _profile(actor)
    if profile is None:
        return Decision(False, Basis.NONE, "not authenticated")
    if study is not None and study.patient_id != patient.pk:
        return Decision(False, Basis.NONE, "the study does not belong to this patient")
    if profile.role in HOSPITAL_ROLES:
        if purpose != Purpose.TREATMENT:
            return Decision(False, Basis.NONE, "hospital staff read patient data for treatment only")
        if study is not None and study.hospital_id == profile.hospital_id:
            return Decision(True, Basis.OWN_HOSPITAL, "study held by your hospital")
        if study is None and patient.studies.filter(hospital_id=profile.hospital_id).exists():
            return Decision(True, Basis.OWN_HOSPITAL, "patient has studies at your hospital")
        if profile.role != Role.CLINICIAN:
            return Decision(False, Basis.NONE, "only clinicians may see other hospitals' studies")
        return _clinician_decision(actor, profile, patient, study, now)
    if profile.role == Role.PATIENT:
        if purpose == Purpose.PATIENT_SELF and profile.patient_id is not None and profile.patient_id == patient.pk:
            return Decision(True, Basis.PATIENT_SELF, "your own record")
        return Decision(False, Basis.NONE, "not your own record")
    if profile.role == Role.REGULATOR:
        if purpose == Purpose.OVERSIGHT and study is None:
            return Decision(True, Basis.OVERSIGHT, "regulators review consents and access, not images")
        return Decision(False, Basis.NONE, "regulators review the audit trail, not images")
    return Decision(False, Basis.NONE, "no basis for access")


def _narrowing_q(consent) -> Q:
    """Consent.covers_study as a Study filter."""
    q = Q(patient_id=consent.patient_id)
    if consent.study_id:
        q &= Q(pk=consent.study_id)
    if consent.modality_set:
        any_modality = Q()
        for m in consent.modality_set:
            any_modality |= (Q(modalities=m) | Q(modalities__startswith=m + "\\") | Q(modalities__endswith="\\" + m)
                             | Q(modalities__contains="\\" + m + "\\"))
        q &= any_modality
    if consent.date_from:
        q &= Q(study_date__gte=consent.date_from)
    if consent.date_to:
        q &= Q(study_date__lte=consent.date_to)
    return q


def _clinician_q(actor, profile, now) -> Q:
    from consent.models import BreakGlass

    covering = _consents().active(now).covering(actor, profile.hospital_id)
    denied = covering.filter(action="deny").values("patient_id")
    if settings.CONSENT_DEFAULT == "opt-out":
        other = ~Q(patient_id__in=denied)
    else:
        permits = covering.filter(action="permit")
        plain = permits.filter(modalities="", date_from__isnull=True, date_to__isnull=True, study__isnull=True)
        other = Q(patient_id__in=plain.values("patient_id"))
        # Narrowed consents are few per clinician; each becomes one clause.
        for consent in permits.exclude(pk__in=plain.values("pk")).only(
                "patient_id", "study_id", "modalities", "date_from", "date_to"):
            other |= _narrowing_q(consent)
        other &= ~Q(patient_id__in=denied)
    glass = BreakGlass.objects.filter(actor=actor, expires_at__gt=now).values("patient_id")
    return Q(hospital_id=profile.hospital_id) | Q(patient_id__in=glass) | other


def visible_studies(actor, studies=None):
    """The studies ``actor`` may see, as a queryset filter on ``studies`` (default: all).
    Must agree with ``decide(actor, study.patient, purpose_for(actor), study)`` for every study."""
    from exchange.studies.models import Availability, Study

    qs = (studies if studies is not None else Study.objects.all()).exclude(availability=Availability.WITHDRAWN)
    if isinstance(actor, ShareLinkBearer):
        link = actor.link
        if link.state() != "usable" or not actor.pin_verified:
            return qs.none()
        return qs.filter(pk=link.study_id, patient_id=link.patient_id)
    profile = _profile(actor)
    if profile is None:
        return qs.none()
    if profile.role in HOSPITAL_ROLES:
        if profile.role != Role.CLINICIAN:
            return qs.filter(hospital_id=profile.hospital_id)
        return qs.filter(_clinician_q(actor, profile, timezone.now()))
    if profile.role == Role.PATIENT and profile.patient_id is not None:
        return qs.filter(patient_id=profile.patient_id)
    return qs.none()


def ingest_hospital(actor):
    """The hospital under which ``actor`` may store instances, or None."""
    profile = _profile(actor)
    if profile is not None and profile.role in HOSPITAL_ROLES:
        return profile.hospital
    return None


def basis_label(basis: str) -> str:
    """A readable label of an audit row's basis, for patients and regulators."""
    if basis.startswith("consent:"):
        return f"Your consent #{basis.split(':', 1)[1]}"
    labels = {
        Basis.OWN_HOSPITAL: "The hospital that holds the study",
        Basis.PATIENT_SELF: "You",
        Basis.BREAK_GLASS: "Emergency access (break-glass)",
        Basis.SHARE_LINK: "Your share link",
        Basis.OVERSIGHT: "Regulator oversight",
        Basis.OPT_OUT_DEFAULT: "Province default (you had not objected)",
    }
    return labels.get(basis, basis or "—")
