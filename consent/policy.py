"""The one policy decision point: may this actor see this patient's data, for this purpose?

Every read of patient data goes through ``decide`` (one patient or study) or
``visible_studies`` (a search). Foundation rules, until the consent issue adds patient consent,
share links and break-glass:
- hospital staff (clinician, hospital admin, ingest account) see studies their own hospital holds;
- a patient sees their own studies (patient self-access);
- a regulator sees no patient data (oversight reads the audit trail, not the images);
- anyone else sees nothing.
No decision is cached beyond the call.
"""

from dataclasses import dataclass
from datetime import datetime

from django.db import models

from hospitals.models import HOSPITAL_ROLES, Role


class Purpose(models.TextChoices):
    TREATMENT = "treatment", "Treatment"
    PATIENT_SELF = "patient_self", "Patient self-access"
    OVERSIGHT = "oversight", "Oversight"


class Basis(models.TextChoices):
    OWN_HOSPITAL = "own_hospital", "Own hospital"
    PATIENT_SELF = "patient_self", "Patient self-access"
    NONE = "", "None"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    basis: str
    reason: str
    valid_until: datetime | None = None

    def __bool__(self) -> bool:
        return self.allowed


def _profile(actor):
    if not getattr(actor, "is_authenticated", False):
        return None
    return getattr(actor, "profile", None)


def purpose_for(actor) -> str:
    profile = _profile(actor)
    if profile is None:
        return ""
    if profile.role == Role.PATIENT:
        return Purpose.PATIENT_SELF
    if profile.role == Role.REGULATOR:
        return Purpose.OVERSIGHT
    return Purpose.TREATMENT


def decide(actor, patient, purpose: str, study=None) -> Decision:
    """Decide one read. With ``study``, the decision is about that study's data; without, about
    the patient's record as a whole."""
    profile = _profile(actor)
    if profile is None:
        return Decision(False, Basis.NONE, "not authenticated")
    if profile.role in HOSPITAL_ROLES and purpose == Purpose.TREATMENT:
        if study is not None and study.hospital_id == profile.hospital_id:
            return Decision(True, Basis.OWN_HOSPITAL, "study held by the actor's hospital")
        if study is None and patient.studies.filter(hospital_id=profile.hospital_id).exists():
            return Decision(True, Basis.OWN_HOSPITAL, "patient has studies at the actor's hospital")
        return Decision(False, Basis.NONE, "no consent covers this hospital's access to this study")
    if profile.role == Role.PATIENT and purpose == Purpose.PATIENT_SELF:
        if profile.patient_id is not None and profile.patient_id == patient.pk:
            return Decision(True, Basis.PATIENT_SELF, "the patient's own record")
        return Decision(False, Basis.NONE, "not the patient's own record")
    if profile.role == Role.REGULATOR:
        return Decision(False, Basis.NONE, "regulators review the audit trail, not images")
    return Decision(False, Basis.NONE, "no basis for access")


def visible_studies(actor, studies=None):
    """The studies ``actor`` may see, as a queryset filter on ``studies`` (default: all).
    Must agree with ``decide`` for every study; tests check both together."""
    from exchange.studies.models import Study

    qs = studies if studies is not None else Study.objects.all()
    profile = _profile(actor)
    if profile is None:
        return qs.none()
    if profile.role in HOSPITAL_ROLES:
        return qs.filter(hospital_id=profile.hospital_id)
    if profile.role == Role.PATIENT and profile.patient_id is not None:
        return qs.filter(patient_id=profile.patient_id)
    return qs.none()


def ingest_hospital(actor):
    """The hospital under which ``actor`` may store instances, or None."""
    profile = _profile(actor)
    if profile is not None and profile.role in HOSPITAL_ROLES:
        return profile.hospital
    return None
