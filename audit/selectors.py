"""Reads of the audit trail for the regulator's pages and exports (issue #4).

Dates that people type (a search's "from" and "to", a dashboard period) are local calendar days
in settings.TIME_ZONE; the trail stores UTC instants. ``day_start`` converts one to the other.
"""

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db.models import Q, QuerySet

from audit.models import AuditEvent, BreakGlassReview, Event

# Reads of image data: what the cross-hospital and mutual-recognition figures count.
ACCESS_EVENTS = (Event.INSTANCES_ACCESSED, Event.INSTANCES_TRANSFERRED)
# Every way a person opens a patient's images; the anomaly checks watch these.
PATIENT_OPEN_EVENTS = ACCESS_EVENTS + (Event.BREAK_GLASS, Event.SHARE_LINK_USE)

# What a page row or an exported event needs, in one query.
EVENT_RELATED = ("actor_hospital", "patient", "study", "study__hospital")


def local_tz() -> ZoneInfo:
    return ZoneInfo(settings.TIME_ZONE)


def day_start(day: date) -> datetime:
    """The instant a local calendar day begins."""
    return datetime.combine(day, time.min, tzinfo=local_tz())


@dataclass(frozen=True)
class EventFilters:
    """A search of the trail. Empty fields do not filter; ``date_to`` is inclusive."""

    patient: object | None = None  # mpi.Patient
    actor: str = ""
    hospital: object | None = None  # hospitals.Hospital: acting or holding the study
    date_from: date | None = None
    date_to: date | None = None
    event: str = ""
    outcome: str = ""

    def as_details(self) -> dict:
        """The search as it is written into the audit trail (ids and codes, never names)."""
        values = {
            "patient": str(self.patient.enterprise_id) if self.patient else "",
            "actor": self.actor,
            "hospital": self.hospital.code if self.hospital else "",
            "date_from": self.date_from.isoformat() if self.date_from else "",
            "date_to": self.date_to.isoformat() if self.date_to else "",
            "event": self.event,
            "outcome": self.outcome,
        }
        return {name: value for name, value in values.items() if value}


def events_search(filters: EventFilters) -> QuerySet[AuditEvent]:
    """Events matching ``filters``, newest first, with what a row shows already joined."""
    qs = AuditEvent.objects.all()
    if filters.patient is not None:
        qs = qs.filter(patient=filters.patient)
    if filters.actor:
        qs = qs.filter(actor_name__iexact=filters.actor)
    if filters.hospital is not None:
        qs = qs.filter(Q(actor_hospital=filters.hospital) | Q(study__hospital=filters.hospital))
    if filters.date_from:
        qs = qs.filter(timestamp__gte=day_start(filters.date_from))
    if filters.date_to:
        qs = qs.filter(timestamp__lt=day_start(filters.date_to + timedelta(days=1)))
    if filters.event:
        qs = qs.filter(event=filters.event)
    if filters.outcome:
        qs = qs.filter(outcome=filters.outcome)
    return qs.select_related(*EVENT_RELATED).order_by("-id")


def patient_history(patient) -> QuerySet[AuditEvent]:
    """Everything the trail says about one patient: who looked, from where, on what basis."""
    return events_search(EventFilters(patient=patient))


def break_glass_pending() -> QuerySet[AuditEvent]:
    """Break-glass events no regulator has reviewed yet, oldest first (a queue)."""
    return (AuditEvent.objects.filter(event=Event.BREAK_GLASS, review__isnull=True)
            .select_related(*EVENT_RELATED).order_by("id"))


def break_glass_reviewed() -> QuerySet[BreakGlassReview]:
    return BreakGlassReview.objects.select_related(
        "reviewer", *(f"event__{name}" for name in EVENT_RELATED)).order_by("-reviewed_at", "-id")
