"""Reads of the patient index that carry a rule: who may see which patient, who may steward."""

from django.db.models import Q

from consent import policy
from exchange.mpi.models import Patient, PatientIdentifier, ReviewItem, ReviewStatus
from exchange.studies.names import wildcard_regex
from hospitals.models import HOSPITAL_ROLES, Role


def _profile(actor):
    if not getattr(actor, "is_authenticated", False):
        return None
    return getattr(actor, "profile", None)


def is_platform_steward(actor) -> bool:
    """The platform's data stewards: staff accounts (and superusers) steward every hospital."""
    return bool(getattr(actor, "is_authenticated", False) and (actor.is_superuser or actor.is_staff))


def steward_hospital_id(actor):
    """The hospital whose identifiers ``actor`` stewards as its hospital admin, or None."""
    profile = _profile(actor)
    if profile is not None and profile.role == Role.HOSPITAL_ADMIN:
        return profile.hospital_id
    return None


def may_steward(actor, identifier: PatientIdentifier) -> bool:
    if is_platform_steward(actor):
        return True
    hospital_id = steward_hospital_id(actor)
    return hospital_id is not None and identifier.hospital_id == hospital_id


def may_review(actor) -> bool:
    return is_platform_steward(actor) or steward_hospital_id(actor) is not None


def review_items_for(actor, status: str | None = ReviewStatus.OPEN):
    """Review items ``actor`` may see: stewards all, a hospital admin those touching their hospital."""
    qs = ReviewItem.objects.select_related("identifier__hospital", "candidate__hospital", "identifier__patient",
                                           "candidate__patient", "decided_by")
    if status:
        qs = qs.filter(status=status)
    if is_platform_steward(actor):
        return qs
    hospital_id = steward_hospital_id(actor)
    if hospital_id is None:
        return qs.none()
    return qs.filter(Q(identifier__hospital_id=hospital_id) | Q(candidate__hospital_id=hospital_id))


def visible_patients(actor):
    """Patients whose index entry ``actor`` may see (PIX/PDQ/$match).

    Studies go through the one door (consent.policy.visible_studies); hospital staff also see
    patients their own hospital registered (identifiers without studies yet, e.g. from the feed).
    Stewards see all. Numbers are shown masked to everyone (the API never returns them whole).
    """
    if is_platform_steward(actor):
        return Patient.objects.all()
    profile = _profile(actor)
    if profile is None:
        return Patient.objects.none()
    with_studies = policy.visible_studies(actor).values("patient_id")
    cond = Q(pk__in=with_studies)
    if profile.role in HOSPITAL_ROLES:
        cond |= Q(pk__in=PatientIdentifier.objects.filter(hospital_id=profile.hospital_id).values("patient_id"))
    elif profile.role != Role.PATIENT:
        return Patient.objects.none()
    return Patient.objects.filter(cond)


def patient_may_see(actor, patient: Patient) -> bool:
    return visible_patients(actor).filter(pk=patient.pk).exists()


def pdq_search(actor, *, name: str = "", birth_date=None, sex: str = "", ric_index: str | None = None,
               local: tuple[str, str] | None = None, limit: int = 50) -> list[Patient]:
    """Patients matching a demographic query (PDQ), limited to those ``actor`` may see.

    Conditions apply to one identifier (one hospital's record) of the patient, like a person
    would read them off one registration."""
    idents = PatientIdentifier.objects.all()
    if name:
        pattern = name if "*" in name or "?" in name else name + "*"
        idents = idents.filter(name_search__regex=wildcard_regex(pattern))
    if birth_date:
        idents = idents.filter(birth_date=birth_date)
    if sex:
        idents = idents.filter(sex=sex)
    if ric_index:
        idents = idents.filter(ric_index=ric_index)
    if local:
        idents = idents.filter(hospital__assigning_authority=local[0], local_id=local[1])
    return list(visible_patients(actor).filter(pk__in=idents.values("patient_id"))
                .select_related("merged_into").order_by("pk")[:limit])
