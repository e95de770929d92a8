"""Anomaly flags on the audit trail for the regulator's dashboard (issue #4).

Each check is one aggregate query over a period, so it runs on the whole trail in the database
(SQLite or PostgreSQL) rather than in Python. A flag is a lead for a regulator to look at, not
proof of misuse: night shifts and busy emergency departments will trip some of them.

- many_patients: one user opening more than MANY_PATIENTS_PER_DAY *unrelated* patients in one
  local day. A patient is unrelated to the user when the user's hospital holds none of the
  patient's studies, so a radiologist reading their own hospital's worklist is not flagged,
  while someone browsing other hospitals' patients is. Denied attempts count: trying is the sign.
- unusual_hours: access at the local hours of settings.AUDIT_UNUSUAL_HOURS, per user.
- after_revoke: access to a patient by someone else within AFTER_REVOKE_WINDOW after the
  patient's consent was revoked (a CONSENT_CHANGE event with details.action "revoke" or "revoked").
"""

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Count, Exists, Max, Min, OuterRef
from django.db.models.functions import ExtractHour, TruncDate

from audit.models import AuditEvent, Event, Outcome
from audit.selectors import PATIENT_OPEN_EVENTS, local_tz

MANY_PATIENTS_PER_DAY = 20
AFTER_REVOKE_WINDOW = timedelta(hours=24)
# details.action of a CONSENT_CHANGE that withdraws consent (consent.services writes "revoked").
REVOKE_ACTIONS = ("revoke", "revoked")
# The dashboard lists at most this many flags of each kind (the total is shown).
MAX_FLAGS = 50


class FlagKind:
    MANY_PATIENTS = "many_patients"
    UNUSUAL_HOURS = "unusual_hours"
    AFTER_REVOKE = "after_revoke"


@dataclass(frozen=True)
class Flag:
    kind: str
    actor: str
    hospital: str
    when: date | datetime
    count: int
    description: str
    patient: str = ""  # enterprise id, for a link to the patient's history
    seq: int | None = None


def unusual_hours(spec: str | None = None) -> frozenset[int]:
    """Parse AUDIT_UNUSUAL_HOURS: comma-separated local hour ranges ``start-end`` (end excluded)
    or single hours. "0-6" is 00:00-05:59; "22-6" wraps past midnight; "" means none."""
    spec = settings.AUDIT_UNUSUAL_HOURS if spec is None else spec
    hours: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            if "-" in part:
                start, end = (int(x) for x in part.split("-", 1))
            else:
                start = int(part)
                end = start + 1
        except ValueError:
            raise ImproperlyConfigured(f"AUDIT_UNUSUAL_HOURS: {part!r} is not an hour range like 0-6") from None
        if not (0 <= start <= 23 and 0 <= end <= 24):
            raise ImproperlyConfigured(f"AUDIT_UNUSUAL_HOURS: {part!r} is outside 0-24")
        hours.update(range(start, end) if start < end else [*range(start, 24), *range(0, end)])
    return frozenset(hours)


def _period(qs, start: datetime, end: datetime):
    return qs.filter(timestamp__gte=start, timestamp__lt=end)


def many_patients(start: datetime, end: datetime, threshold: int = MANY_PATIENTS_PER_DAY) -> list[Flag]:
    from exchange.studies.models import Study

    related = Study.objects.filter(patient=OuterRef("patient"), hospital=OuterRef("actor_hospital"))
    rows = (
        _period(AuditEvent.objects, start, end)
        .filter(event__in=(*PATIENT_OPEN_EVENTS, Event.ACCESS_DENIED), actor__isnull=False, patient__isnull=False)
        .filter(~Exists(related))
        .annotate(day=TruncDate("timestamp", tzinfo=local_tz()))
        .values("actor_id", "actor_name", "actor_hospital__code", "day")
        .annotate(n=Count("patient", distinct=True))
        .filter(n__gt=threshold)
        .order_by("-n", "day", "actor_name")
    )
    return [
        Flag(FlagKind.MANY_PATIENTS, r["actor_name"], r["actor_hospital__code"] or "", r["day"], r["n"],
             f"opened {r['n']} unrelated patients in one day (threshold {threshold})")
        for r in rows[:MAX_FLAGS]
    ]


def at_unusual_hours(start: datetime, end: datetime, hours: frozenset[int] | None = None) -> list[Flag]:
    hours = unusual_hours() if hours is None else hours
    if not hours:
        return []
    rows = (
        _period(AuditEvent.objects, start, end)
        .filter(event__in=PATIENT_OPEN_EVENTS, outcome=Outcome.SUCCESS, actor__isnull=False)
        .annotate(hour=ExtractHour("timestamp", tzinfo=local_tz()))
        .filter(hour__in=sorted(hours))
        .values("actor_id", "actor_name", "actor_hospital__code")
        .annotate(n=Count("id"), first=Min("timestamp"), last=Max("timestamp"))
        .order_by("-n", "actor_name")
    )
    return [
        Flag(FlagKind.UNUSUAL_HOURS, r["actor_name"], r["actor_hospital__code"] or "", r["last"], r["n"],
             f"{r['n']} access{'es' if r['n'] != 1 else ''} at unusual hours"
             f" ({settings.AUDIT_UNUSUAL_HOURS}, {settings.TIME_ZONE})")
        for r in rows[:MAX_FLAGS]
    ]


def after_revoke(start: datetime, end: datetime, window: timedelta = AFTER_REVOKE_WINDOW) -> list[Flag]:
    revoked = (
        AuditEvent.objects.filter(event=Event.CONSENT_CHANGE, details__action__in=REVOKE_ACTIONS, patient=OuterRef("patient"),
                                  timestamp__lt=OuterRef("timestamp"), timestamp__gte=OuterRef("timestamp") - window)
        .exclude(actor=OuterRef("actor"))
    )
    rows = (
        _period(AuditEvent.objects, start, end)
        .filter(event__in=PATIENT_OPEN_EVENTS, outcome=Outcome.SUCCESS, actor__isnull=False, patient__isnull=False)
        .filter(Exists(revoked))
        .select_related("actor_hospital", "patient")
        .order_by("-id")
    )
    hours = int(window.total_seconds() // 3600)
    return [
        Flag(FlagKind.AFTER_REVOKE, e.actor_name, e.actor_hospital.code if e.actor_hospital else "", e.timestamp, 1,
             f"{e.get_event_display()} within {hours} h after the patient revoked consent",
             patient=str(e.patient.enterprise_id), seq=e.seq)
        for e in rows[:MAX_FLAGS]
    ]


def anomalies(start: datetime, end: datetime) -> dict[str, list[Flag]]:
    """All flags in [start, end), by kind."""
    return {
        FlagKind.MANY_PATIENTS: many_patients(start, end),
        FlagKind.UNUSUAL_HOURS: at_unusual_hours(start, end),
        FlagKind.AFTER_REVOKE: after_revoke(start, end),
    }
