"""Linking arriving identities to enterprise patients, and the stewards' corrections.

Every identity that arrives (STOW-RS, import, C-STORE, archive sync, the FHIR/HL7 identity feed)
goes through ``identifier_resolve``: normalise, then either the local id is known (same hospital +
local id: the same patient, unless it now carries a different valid identity card number, which is
refused) or the matcher (exchange/mpi/matching.py) scores it against candidates found through the
blocking-key index and decides: link to the candidate's patient, new patient plus a review item,
or new patient. A missed link can be repaired later; a wrong link shows one person's images to
another person's doctor, so every doubt goes to review and nothing is merged silently.

Stewardship (``patient_link``, ``identifier_unlink``, ``patient_merge``, ``merge_undo``,
``review_accept``, ``review_reject``) moves identifiers between patients; the studies follow their
identifier (Study.patient == Study.identifier.patient always), each move is kept in a MergeRecord
so it can be undone exactly, and every decision is audited in the same transaction.
"""

import logging
from dataclasses import dataclass, field
from datetime import date

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, Max
from django.utils import timezone

from audit import record
from audit.models import Event
from exchange.mpi import crypto, matching
from exchange.mpi.identity import ric_blind_index
from exchange.mpi.models import (
    BlockingKey,
    MergeKind,
    MergeRecord,
    Patient,
    PatientIdentifier,
    ReviewItem,
    ReviewStatus,
    RicStatus,
)
from exchange.mpi.normalize import phone_normalize, ric_normalize
from exchange.mpi.selectors import is_platform_steward, may_steward
from exchange.studies.names import search_key

log = logging.getLogger(__name__)

# Candidates compared per arriving identity, most shared blocking keys first: bounds the work
# for very common names (王伟 born in the same year) without a full scan.
MAX_CANDIDATES = 200
SEXES = ("M", "F", "O")
# Below this many identifiers the index is too small to say how common a name is; the matcher's
# default frequency (a fairly common name) is used instead.
MIN_INDEX_FOR_NAME_FREQUENCY = 1000


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
    ric: str | None = None  # as received; normalised (and checked) here
    phone: str | None = None
    # Other ids the sender gave: (system/issuer, value) pairs that are not identity card numbers.
    other_ids: tuple = field(default_factory=tuple)


@dataclass(frozen=True)
class _Clean:
    ric: str | None
    ric_status: str
    ric_index: str | None
    phone: str | None
    phone_index: str | None
    sex: str


@dataclass(frozen=True)
class MatchDecision:
    outcome: matching.Outcome
    candidate: PatientIdentifier | None = None
    score: float | None = None
    breakdown: dict | None = None
    rule: str | None = None
    why: str = ""
    # The patient to link to (LINK); the candidate's patient unless the number named another.
    patient: Patient | None = None

    @property
    def target(self) -> Patient | None:
        return self.patient or (self.candidate.patient if self.candidate else None)


def _clean(d: Demographics) -> _Clean:
    number, status = ric_normalize(d.ric) if d.ric else (None, "missing")
    phone = phone_normalize(d.phone) if d.phone else None
    return _Clean(
        ric=number if status == "valid" else None,
        ric_status=status if status in RicStatus.values else RicStatus.INVALID,
        ric_index=ric_blind_index(number) if number and status == "valid" else None,
        phone=phone,
        phone_index=crypto.blind_index(phone, domain="phone") if phone else None,
        sex=d.sex if d.sex in SEXES else "",
    )


def _record_of(pk, hospital_code: str, d, ric: str | None, phone: str | None) -> "matching.Record":
    return matching.Record(
        record_id=str(pk), hospital=hospital_code, local_id=d.local_id,
        name_alphabetic=d.name_alphabetic or "", name_ideographic=d.name_ideographic or "",
        name_phonetic=d.name_phonetic or "", birth_date=d.birth_date, sex=d.sex or "", ric=ric, phone=phone,
    )


def _identifier_record(ident: PatientIdentifier) -> "matching.Record":
    return _record_of(ident.pk, ident.hospital.code, ident, ident.get_ric(), ident.get_phone())


def _hashed_keys(prepared) -> list[str]:
    # Some keys carry the identity card or phone number: only their keyed HMAC is stored.
    return sorted({crypto.blind_index(k, domain="block") for k in matching.blocking_keys(prepared)})


def _name_freq(prepared) -> float | None:
    """Share of identifiers with this name (frequency-adjusted name weight), from two index lookups."""
    if not prepared.name_key:
        return None
    total = PatientIdentifier.objects.aggregate(n=Max("pk"))["n"] or 0  # ids approximate the row count
    if total < MIN_INDEX_FOR_NAME_FREQUENCY:
        return None
    count = PatientIdentifier.objects.filter(name_key=prepared.name_key[:100]).count()
    return matching.name_frequency(count, total)


def _candidates(prepared, c: _Clean, exclude_pk=None) -> list[PatientIdentifier]:
    """Identifiers sharing a blocking key or the identity card number (index lookups only)."""
    ids: list[int] = []
    if c.ric_index:
        ids += PatientIdentifier.objects.filter(ric_index=c.ric_index).values_list("pk", flat=True)[:20]
    keys = _hashed_keys(prepared)
    if keys:
        ids += (BlockingKey.objects.filter(key__in=keys).values("identifier_id").annotate(n=Count("id"))
                .order_by("-n", "-identifier_id").values_list("identifier_id", flat=True)[:MAX_CANDIDATES])
    wanted = list(dict.fromkeys(i for i in ids if i != exclude_pk))
    return list(PatientIdentifier.objects.filter(pk__in=wanted).select_related("hospital", "patient"))


def match_decide(*, hospital, demographics: Demographics, exclude_pk=None) -> MatchDecision:
    """Score an identity against the index and decide link / review / new (no writes)."""
    c = _clean(demographics)
    prepared = matching.prepare(_record_of("new", hospital.code, demographics, c.ric, c.phone))
    scored = []
    candidates = _candidates(prepared, c, exclude_pk)
    freq = _name_freq(prepared) if candidates else None
    for cand in candidates:
        score = matching.compare(prepared, matching.prepare(_identifier_record(cand)), name_freq=freq)
        scored.append((score, cand))
    return _decide(scored, c, hospital)


def match_rank(*, hospital_code: str, demographics: Demographics, limit: int = 10) -> list[tuple]:
    """Best (score, identifier) per patient for a query ($match): no writes, no decision."""
    c = _clean(demographics)
    prepared = matching.prepare(_record_of("query", hospital_code, demographics, c.ric, c.phone))
    best: dict[int, tuple] = {}
    candidates = _candidates(prepared, c)
    freq = _name_freq(prepared) if candidates else None
    for cand in candidates:
        score = matching.compare(prepared, matching.prepare(_identifier_record(cand)), name_freq=freq)
        if score.rule == "ric-conflict":
            continue
        if cand.patient_id not in best or score.total > best[cand.patient_id][0].total:
            best[cand.patient_id] = (score, cand)
    return sorted(best.values(), key=lambda sc: -sc[0].total)[:limit]


def _decide(scored: list[tuple], c: _Clean, hospital) -> MatchDecision:
    link_at, review_at = settings.MPI_LINK_THRESHOLD, settings.MPI_REVIEW_THRESHOLD
    # A valid identity card number already known: always the same person.
    if c.ric_index:
        owner = Patient.objects.filter(ric_index=c.ric_index).first()
        same = [(s, i) for s, i in scored if i.ric_index == c.ric_index]
        if owner is not None or same:
            pick = next(((s, i) for s, i in same if owner is None or i.patient_id == owner.pk), None)
            if pick is None and owner is not None:
                cand = owner.identifiers.select_related("hospital").first()
                return MatchDecision(matching.Outcome.LINK, cand, None, {}, "ric-match", "identity card number", owner)
            if pick is not None:
                s, i = pick
                return MatchDecision(matching.Outcome.LINK, i, s.total, s.breakdown, "ric-match", "identity card number")
    best_per_patient: dict[int, tuple] = {}
    for s, i in scored:
        if s.rule == "ric-conflict":
            continue
        # A different valid number anywhere on the candidate's patient rules it out.
        if c.ric_index and i.patient.ric_index and i.patient.ric_index != c.ric_index:
            continue
        if i.patient_id not in best_per_patient or s.total > best_per_patient[i.patient_id][0].total:
            best_per_patient[i.patient_id] = (s, i)
    if not best_per_patient:
        return MatchDecision(matching.Outcome.NEW, why="no candidate")
    ranked = sorted(best_per_patient.values(), key=lambda si: -si[0].total)
    s, i = ranked[0]
    outcome = matching.classify(s, link=link_at, review=review_at)
    why = "score"
    if outcome == matching.Outcome.LINK:
        if len(ranked) > 1 and matching.classify(ranked[1][0], link=link_at, review=review_at) == matching.Outcome.LINK:
            outcome, why = matching.Outcome.REVIEW, "two patients above the link threshold"
        elif i.patient.identifiers.filter(hospital=hospital).exists():
            # The hospital already has another local id for that patient: a second registration
            # is possible, but so is a relative; a person decides.
            outcome, why = matching.Outcome.REVIEW, "patient already has another local id at this hospital"
    return MatchDecision(outcome, i, s.total, s.breakdown, s.rule, why)


def _apply(ident: PatientIdentifier, d: Demographics, c: _Clean) -> None:
    prepared = matching.prepare(_record_of(ident.pk, "", d, c.ric, c.phone))
    ident.name_key = prepared.name_key[:100]
    ident.issuer = d.issuer or ident.issuer
    ident.name_alphabetic = d.name_alphabetic
    ident.name_ideographic = d.name_ideographic
    ident.name_phonetic = d.name_phonetic
    ident.name_search = search_key(d.name_alphabetic, d.name_ideographic, d.name_phonetic)
    ident.birth_date = d.birth_date
    ident.sex = c.sex
    if c.ric_index != ident.ric_index or not ident.ric_encrypted:
        ident.ric_index = c.ric_index
        ident.ric_encrypted = crypto.encrypt(c.ric) if c.ric else ""
    ident.ric_status = c.ric_status
    if c.phone_index != ident.phone_index or (c.phone and not ident.phone_encrypted):
        ident.phone_index = c.phone_index
        ident.phone_encrypted = crypto.encrypt(c.phone) if c.phone else ""
    ident.other_ids = [{"system": s, "value": v} for s, v in d.other_ids][:20]


def _blocking_keys_save(ident: PatientIdentifier, d: Demographics, c: _Clean) -> None:
    keys = _hashed_keys(matching.prepare(_record_of(ident.pk, ident.hospital.code, d, c.ric, c.phone)))
    BlockingKey.objects.filter(identifier=ident).delete()
    BlockingKey.objects.bulk_create([BlockingKey(identifier=ident, key=k[:64]) for k in keys], ignore_conflicts=True)


def _audit_decision(actor, ident: PatientIdentifier, decision: MatchDecision, action: str) -> None:
    record(Event.PATIENT_RECORD, actor, patient=ident.patient, details={
        "action": action, "outcome": decision.outcome.value, "identifier": ident.pk, "hospital": ident.hospital.code,
        "candidate": decision.candidate.pk if decision.candidate else None,
        "score": round(decision.score, 2) if decision.score is not None else None,
        "rule": decision.rule, "why": decision.why,
    })


def _review_open(ident: PatientIdentifier, decision: MatchDecision) -> ReviewItem:
    item, _ = ReviewItem.objects.get_or_create(
        identifier=ident, candidate=decision.candidate,
        defaults={"score": decision.score or 0.0, "breakdown": _jsonable(decision.breakdown or {})},
    )
    return item


def _jsonable(breakdown: dict) -> dict:
    return {str(k): (round(float(v), 3) if isinstance(v, (int, float)) else str(v)) for k, v in breakdown.items()}


def _patient_new(d: Demographics, c: _Clean) -> Patient:
    ric_index = c.ric_index
    if ric_index and Patient.objects.filter(ric_index=ric_index).exists():
        ric_index = None  # the number belongs to another patient (only via a steward's REVIEW)
    return Patient.objects.create(name_alphabetic=d.name_alphabetic, name_ideographic=d.name_ideographic,
                                  birth_date=d.birth_date, sex=c.sex, ric_index=ric_index)


def identifier_resolve(*, hospital, demographics: Demographics, actor=None) -> PatientIdentifier:
    """Find or create the local identifier and its enterprise patient. Call inside a transaction."""
    d = demographics
    c = _clean(d)
    existing = (PatientIdentifier.objects.select_for_update().select_related("patient", "hospital")
                .filter(hospital=hospital, local_id=d.local_id).first())
    if existing is not None:
        _existing_update(existing, d, c, actor)
        return existing

    decision = match_decide(hospital=hospital, demographics=d)
    try:
        with transaction.atomic():
            if decision.outcome == matching.Outcome.LINK:
                patient = decision.target
                if c.ric_index and not patient.ric_index and not Patient.objects.filter(ric_index=c.ric_index).exists():
                    patient.ric_index = c.ric_index
                    patient.save(update_fields=["ric_index", "updated_at"])
            else:
                patient = _patient_new(d, c)
            ident = PatientIdentifier(patient=patient, hospital=hospital, local_id=d.local_id)
            _apply(ident, d, c)
            ident.save()
    except IntegrityError:
        # A concurrent ingest registered the same local id or the same number first: start over
        # (the local id is then found and re-checked for conflicts).
        return identifier_resolve(hospital=hospital, demographics=demographics, actor=actor)
    _blocking_keys_save(ident, d, c)
    if decision.outcome == matching.Outcome.REVIEW:
        _review_open(ident, decision)
    _audit_decision(actor, ident, decision, "identifier_resolve")
    return ident


def _existing_update(existing: PatientIdentifier, d: Demographics, c: _Clean, actor) -> None:
    """Same hospital, same local id: the same patient. Conflict rules as the foundation's."""
    if c.ric_index and existing.ric_index and existing.ric_index != c.ric_index:
        raise IdentityConflict("local patient id already registered with a different identity card number")
    changed = []
    if c.ric_index and not existing.ric_index:
        existing.ric_index, existing.ric_encrypted, existing.ric_status = c.ric_index, crypto.encrypt(c.ric), RicStatus.VALID
        changed += ["ric_index", "ric_encrypted", "ric_status"]
    if c.phone_index and c.phone_index != existing.phone_index:
        existing.phone_index, existing.phone_encrypted = c.phone_index, crypto.encrypt(c.phone)
        changed += ["phone_index", "phone_encrypted"]
    if not changed:
        return
    existing.save(update_fields=changed + ["updated_at"])
    if "ric_index" in changed:
        owner = Patient.objects.filter(ric_index=c.ric_index).exclude(pk=existing.patient_id).first()
        if owner is None and not existing.patient.ric_index:
            Patient.objects.filter(pk=existing.patient_id).update(ric_index=c.ric_index)
        elif owner is not None:
            # The number says this is another patient; the local id already has studies here,
            # so a steward moves them (never silently).
            cand = owner.identifiers.select_related("hospital").first()
            if cand is not None:
                decision = MatchDecision(matching.Outcome.REVIEW, cand, 0.0, {"ric": "match"}, "ric-match",
                                         "identity card number added to a known local id")
                _review_open(existing, decision)
                _audit_decision(actor, existing, decision, "identifier_update")


@transaction.atomic
def identifier_update(*, hospital, demographics: Demographics, actor) -> tuple[PatientIdentifier, str]:
    """The identity feed's update: replace the demographics this hospital recorded for its local
    id (create it if unknown). Returns (identifier, outcome of matching or 'updated')."""
    d = demographics
    c = _clean(d)
    ident = (PatientIdentifier.objects.select_for_update().select_related("patient", "hospital")
             .filter(hospital=hospital, local_id=d.local_id).first())
    if ident is None:
        ident = identifier_resolve(hospital=hospital, demographics=d, actor=actor)
        return ident, _last_outcome(ident)
    if c.ric_index and ident.ric_index and ident.ric_index != c.ric_index:
        raise IdentityConflict("local patient id already registered with a different identity card number")
    had_ric = ident.ric_index
    _apply(ident, d, c)
    ident.save()
    _blocking_keys_save(ident, d, c)
    outcome = "updated"
    # An identifier alone on its patient may now be recognised as someone already known.
    alone = not ident.patient.identifiers.exclude(pk=ident.pk).exists()
    if alone and not ReviewItem.objects.filter(identifier=ident, status=ReviewStatus.OPEN).exists():
        decision = match_decide(hospital=hospital, demographics=d, exclude_pk=ident.pk)
        if decision.target is not None and decision.target.pk == ident.patient_id:
            decision = MatchDecision(matching.Outcome.NEW, why="already this patient")
        if decision.outcome == matching.Outcome.LINK:
            _link(ident, decision.target, actor, "identity feed update matched", MergeKind.LINK)
            outcome = "link"
        elif decision.outcome == matching.Outcome.REVIEW:
            _review_open(ident, decision)
            outcome = "review"
        _audit_decision(actor, ident, decision, "identifier_update")
    else:
        record(Event.PATIENT_RECORD, actor, patient=ident.patient,
               details={"action": "identifier_update", "identifier": ident.pk, "hospital": hospital.code})
    ident.refresh_from_db()
    if c.ric_index and not had_ric and ident.patient.ric_index != c.ric_index:
        # A number newly added to a local id that shares its patient with others: attach it to
        # the patient, or, if it names another patient, let a steward decide.
        owner = Patient.objects.filter(ric_index=c.ric_index).first()
        if owner is None and not ident.patient.ric_index:
            Patient.objects.filter(pk=ident.patient_id).update(ric_index=c.ric_index)
        elif owner is not None and owner.pk != ident.patient_id:
            cand = owner.identifiers.select_related("hospital").first()
            if cand is not None:
                _review_open(ident, MatchDecision(matching.Outcome.REVIEW, cand, 0.0, {"ric": "match"}, "ric-match"))
                outcome = "review"
    return ident, outcome


def _last_outcome(ident: PatientIdentifier) -> str:
    if ReviewItem.objects.filter(identifier=ident, status=ReviewStatus.OPEN).exists():
        return "review"
    return "link" if ident.patient.identifiers.exclude(pk=ident.pk).exists() else "new"


# --- Stewardship ---------------------------------------------------------------------------


def _require_steward(actor, identifiers) -> None:
    for ident in identifiers:
        if not may_steward(actor, ident):
            raise PermissionDenied("not a data steward for this patient's identifiers")


def _move(identifier_ids: list[int], target: Patient) -> list[int]:
    """Move identifiers to ``target``; their studies follow. Returns the moved study ids."""
    from exchange.studies.models import Study

    study_ids = sorted(Study.objects.filter(identifier_id__in=identifier_ids).values_list("pk", flat=True))
    PatientIdentifier.objects.filter(pk__in=identifier_ids).update(patient=target, updated_at=timezone.now())
    Study.objects.filter(identifier_id__in=identifier_ids).update(patient=target, updated_at=timezone.now())
    return study_ids


def _ric_follows(ident_ids: list[int], source: Patient, target: Patient) -> bool:
    """Move the source's identity card blind index to the target when the number goes with the
    moved identifiers and no identifier left behind carries it."""
    if not source.ric_index or target.ric_index:
        return False
    moving = PatientIdentifier.objects.filter(pk__in=ident_ids, ric_index=source.ric_index).exists()
    staying = source.identifiers.exclude(pk__in=ident_ids).filter(ric_index=source.ric_index).exists()
    if not moving or staying:
        return False
    index = source.ric_index
    Patient.objects.filter(pk=source.pk).update(ric_index=None)
    Patient.objects.filter(pk=target.pk).update(ric_index=index)
    source.ric_index, target.ric_index = None, index
    return True


def _check_compatible(ident_qs, target: Patient) -> None:
    if target.ric_index and ident_qs.exclude(ric_index__isnull=True).exclude(ric_index=target.ric_index).exists():
        raise ValidationError("the identifier carries a different identity card number than the patient")


def _link(ident: PatientIdentifier, patient: Patient, actor, reason: str, kind: str) -> MergeRecord:
    source = Patient.objects.select_for_update().get(pk=ident.patient_id)
    target = Patient.objects.select_for_update().get(pk=patient.pk)
    moved_ric = _ric_follows([ident.pk], source, target)
    studies = _move([ident.pk], target)
    ident.patient = target
    rec = MergeRecord.objects.create(kind=kind, source=source, target=target, identifier_ids=[ident.pk],
                                     study_ids=studies, moved_ric_index=moved_ric, reason=reason,
                                     actor=actor if getattr(actor, "is_authenticated", False) else None)
    record(Event.PATIENT_RECORD, actor, patient=target, details={
        "action": f"patient_{kind}" if kind != MergeKind.UNLINK else "identifier_unlink", "merge_record": rec.pk,
        "identifier": ident.pk, "from": str(source.enterprise_id), "to": str(target.enterprise_id),
        "studies": len(studies), "reason": reason[:500]})
    return rec


@transaction.atomic
def patient_link(*, identifier: PatientIdentifier, patient: Patient, actor, reason: str) -> MergeRecord:
    """Move one local identifier (and its studies) to ``patient``."""
    _require_steward(actor, [identifier])
    identifier = PatientIdentifier.objects.select_for_update().get(pk=identifier.pk)
    if identifier.patient_id == patient.pk:
        raise ValidationError("the identifier already belongs to this patient")
    _check_compatible(PatientIdentifier.objects.filter(pk=identifier.pk), patient)
    return _link(identifier, patient, actor, reason, MergeKind.LINK)


@transaction.atomic
def identifier_unlink(*, identifier: PatientIdentifier, actor, reason: str) -> MergeRecord:
    """Split one local identifier off to a new patient of its own; its studies go with it."""
    _require_steward(actor, [identifier])
    identifier = PatientIdentifier.objects.select_for_update().get(pk=identifier.pk)
    if not identifier.patient.identifiers.exclude(pk=identifier.pk).exists():
        raise ValidationError("the identifier is the patient's only one")
    new = Patient.objects.create(name_alphabetic=identifier.name_alphabetic, name_ideographic=identifier.name_ideographic,
                                 birth_date=identifier.birth_date, sex=identifier.sex)
    return _link(identifier, new, actor, reason, MergeKind.UNLINK)


@transaction.atomic
def patient_merge(*, source: Patient, target: Patient, actor, reason: str) -> MergeRecord:
    """All of ``source``'s identifiers and studies move to ``target``."""
    if not is_platform_steward(actor):
        _require_steward(actor, list(PatientIdentifier.objects.filter(patient=source).select_related("hospital")))
    return _merge(source, target, actor, reason)


@transaction.atomic
def identifier_merge_reported(*, hospital, surviving_local_id: str, prior_local_id: str, actor) -> MergeRecord | None:
    """A hospital reports that two of its local ids are one person (HL7 ADT^A40): the prior id's
    patient merges into the surviving id's patient. None if they are one patient already."""
    surviving = PatientIdentifier.objects.filter(hospital=hospital, local_id=surviving_local_id).first()
    prior = PatientIdentifier.objects.filter(hospital=hospital, local_id=prior_local_id).first()
    if surviving is None or prior is None:
        raise ValidationError("both local ids of the merge must be registered at this hospital")
    if surviving.patient_id == prior.patient_id:
        return None
    return _merge(prior.patient, surviving.patient, actor, f"ADT^A40 from {hospital.code}")


def _merge(source: Patient, target: Patient, actor, reason: str) -> MergeRecord:
    source = Patient.objects.select_for_update().get(pk=source.pk)
    target = Patient.objects.select_for_update().get(pk=target.pk)
    if source.pk == target.pk:
        raise ValidationError("cannot merge a patient into itself")
    if source.ric_index and target.ric_index and source.ric_index != target.ric_index:
        raise ValidationError("the patients have different identity card numbers")
    idents = list(source.identifiers.select_related("hospital").order_by("pk"))
    _check_compatible(source.identifiers.all(), target)
    ids = [i.pk for i in idents]
    moved_ric = _ric_follows(ids, source, target)
    studies = _move(ids, target)
    Patient.objects.filter(pk=source.pk).update(merged_into=target)
    rec = MergeRecord.objects.create(kind=MergeKind.MERGE, source=source, target=target, identifier_ids=ids,
                                     study_ids=studies, moved_ric_index=moved_ric, reason=reason,
                                     actor=actor if getattr(actor, "is_authenticated", False) else None)
    record(Event.PATIENT_RECORD, actor, patient=target, details={
        "action": "patient_merge", "merge_record": rec.pk, "from": str(source.enterprise_id),
        "to": str(target.enterprise_id), "identifiers": ids, "studies": len(studies), "reason": reason[:500]})
    return rec


@transaction.atomic
def merge_undo(*, merge: MergeRecord, actor, reason: str) -> MergeRecord:
    """Put back exactly what one link, unlink or merge moved (split after a wrong merge)."""
    merge = MergeRecord.objects.select_for_update().get(pk=merge.pk)
    if merge.undone_at is not None:
        raise ValidationError("this change was already undone")
    idents = list(PatientIdentifier.objects.select_for_update().select_related("hospital").filter(pk__in=merge.identifier_ids))
    if not is_platform_steward(actor):
        _require_steward(actor, idents)
    if any(i.patient_id != merge.target_id for i in idents):
        raise ValidationError("some identifiers moved again since; undo the later change first")
    source = Patient.objects.select_for_update().get(pk=merge.source_id)
    target = Patient.objects.select_for_update().get(pk=merge.target_id)
    if merge.moved_ric_index and target.ric_index and not source.ric_index:
        index = target.ric_index
        Patient.objects.filter(pk=target.pk).update(ric_index=None)
        Patient.objects.filter(pk=source.pk).update(ric_index=index)
    studies = _move(merge.identifier_ids, source)
    if merge.kind == MergeKind.MERGE:
        Patient.objects.filter(pk=source.pk).update(merged_into=None)
    merge.undone_at = timezone.now()
    merge.undone_by = actor if getattr(actor, "is_authenticated", False) else None
    merge.save(update_fields=["undone_at", "undone_by"])
    record(Event.PATIENT_RECORD, actor, patient=source, details={
        "action": "merge_undo", "merge_record": merge.pk, "kind": merge.kind, "from": str(target.enterprise_id),
        "to": str(source.enterprise_id), "identifiers": merge.identifier_ids, "studies": len(studies),
        "reason": reason[:500]})
    return merge


def _review_decide(item: ReviewItem, actor, status: str, comment: str) -> ReviewItem:
    item = ReviewItem.objects.select_for_update().select_related("identifier__hospital", "candidate__patient").get(pk=item.pk)
    if item.status != ReviewStatus.OPEN:
        raise ValidationError("this review item was already decided")
    _require_steward(actor, [item.identifier])
    item.status, item.comment = status, comment[:2000]
    item.decided_by = actor if getattr(actor, "is_authenticated", False) else None
    item.decided_at = timezone.now()
    item.save(update_fields=["status", "comment", "decided_by", "decided_at"])
    return item


@transaction.atomic
def review_accept(*, item: ReviewItem, actor, comment: str = "") -> ReviewItem:
    """The two records are one person: link the new identifier to the candidate's patient."""
    item = _review_decide(item, actor, ReviewStatus.ACCEPTED, comment)
    ident = item.identifier
    target = item.candidate.patient
    if ident.patient_id != target.pk:
        _check_compatible(PatientIdentifier.objects.filter(pk=ident.pk), target)
        _link(ident, target, actor, f"review #{item.pk} accepted" + (f": {comment}" if comment else ""), MergeKind.LINK)
    record(Event.PATIENT_RECORD, actor, patient=target, details={
        "action": "review_accept", "review": item.pk, "identifier": ident.pk, "candidate": item.candidate_id})
    return item


@transaction.atomic
def review_reject(*, item: ReviewItem, actor, comment: str = "") -> ReviewItem:
    """Two different people: keep them apart."""
    item = _review_decide(item, actor, ReviewStatus.REJECTED, comment)
    record(Event.PATIENT_RECORD, actor, patient=item.identifier.patient, details={
        "action": "review_reject", "review": item.pk, "identifier": item.identifier_id, "candidate": item.candidate_id})
    return item


def identifiers_reindex(*, batch_size: int = 1000) -> int:
    """Rebuild blocking keys and name_search for every identifier (manage.py mpi_reindex)."""
    done, last_pk = 0, 0
    while True:
        batch = list(PatientIdentifier.objects.filter(pk__gt=last_pk).select_related("hospital").order_by("pk")[:batch_size])
        if not batch:
            return done
        last_pk = batch[-1].pk
        with transaction.atomic():
            keys = []
            for ident in batch:
                prepared = matching.prepare(_identifier_record(ident))
                keys += [BlockingKey(identifier=ident, key=k) for k in _hashed_keys(prepared)]
                name_search = search_key(ident.name_alphabetic, ident.name_ideographic, ident.name_phonetic)
                name_key = prepared.name_key[:100]
                if name_search != ident.name_search or name_key != ident.name_key:
                    PatientIdentifier.objects.filter(pk=ident.pk).update(name_search=name_search, name_key=name_key)
            BlockingKey.objects.filter(identifier__in=batch).delete()
            BlockingKey.objects.bulk_create(keys, ignore_conflicts=True)
        done += len(batch)
