"""Linking arriving identities to enterprise patients.

Foundation rule (the patient-index issue replaces it with a real matcher): an identity is the
same patient as an earlier one if it carries the same local id at the same hospital, or the same
valid Resident Identity Card number. Anything else is a new patient: a missed link can be
repaired later, a wrong link shows one person's images to another person's doctor.
"""

from dataclasses import dataclass
from datetime import date

from django.db import IntegrityError, transaction

from exchange.mpi.identity import ric_blind_index
from exchange.mpi.models import Patient, PatientIdentifier


class IdentityConflict(Exception):
    """The local id is already registered for a person with a different identity card number."""


@dataclass(frozen=True)
class Demographics:
    local_id: str
    issuer: str = ""
    name_alphabetic: str = ""
    name_ideographic: str = ""
    name_phonetic: str = ""
    birth_date: date | None = None
    sex: str = ""
    ric: str | None = None  # already validated by identity.clean_ric


def identifier_resolve(*, hospital, demographics: Demographics) -> PatientIdentifier:
    """Find or create the local identifier and its enterprise patient. Call inside a transaction."""
    d = demographics
    ric_index = ric_blind_index(d.ric) if d.ric else None
    existing = (
        PatientIdentifier.objects.select_for_update().filter(hospital=hospital, local_id=d.local_id).first()
    )
    if existing is not None:
        if ric_index and existing.ric_index and existing.ric_index != ric_index:
            raise IdentityConflict("local patient id already registered with a different identity card number")
        if ric_index and not existing.ric_index:
            existing.ric_index = ric_index
            existing.save(update_fields=["ric_index", "updated_at"])
        return existing

    patient = Patient.objects.filter(ric_index=ric_index).first() if ric_index else None
    if patient is None:
        try:
            with transaction.atomic():
                patient = Patient.objects.create(
                    name_alphabetic=d.name_alphabetic,
                    name_ideographic=d.name_ideographic,
                    birth_date=d.birth_date,
                    sex=d.sex if d.sex in ("M", "F", "O") else "",
                    ric_index=ric_index,
                )
        except IntegrityError:
            # A concurrent ingest created the patient with this identity number first.
            patient = Patient.objects.get(ric_index=ric_index)
    try:
        with transaction.atomic():
            return PatientIdentifier.objects.create(
                patient=patient,
                hospital=hospital,
                local_id=d.local_id,
                issuer=d.issuer,
                name_alphabetic=d.name_alphabetic,
                name_ideographic=d.name_ideographic,
                name_phonetic=d.name_phonetic,
                birth_date=d.birth_date,
                sex=d.sex if d.sex in ("M", "F", "O") else "",
                ric_index=ric_index,
            )
    except IntegrityError:
        # A concurrent ingest registered the same local id first: use it (and re-check conflict).
        return identifier_resolve(hospital=hospital, demographics=demographics)
