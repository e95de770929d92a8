"""audit.record: the one function that writes the audit trail.

Call it inside the transaction of the action it describes (for reads: before the bytes leave).
If it raises, the action must fail with it.
"""

from django.db import transaction

from audit.models import AuditEvent, Event, Outcome


def record(
    event: Event | str,
    actor,
    outcome: Outcome | str = Outcome.SUCCESS,
    patient=None,
    study=None,
    purpose: str | None = None,
    basis: str | None = None,
    details: dict | None = None,
) -> AuditEvent:
    if event not in Event.values:
        raise ValueError(f"unknown audit event {event!r}")
    if outcome not in Outcome.values:
        raise ValueError(f"unknown audit outcome {outcome!r}")
    user = actor if getattr(actor, "is_authenticated", False) else None
    profile = getattr(user, "profile", None) if user is not None else None
    if patient is None and study is not None:
        patient = study.patient
    with transaction.atomic():
        return AuditEvent.objects.create(
            event=event,
            outcome=outcome,
            actor=user,
            actor_name=user.get_username() if user else "",
            actor_role=profile.role if profile else "",
            actor_hospital=profile.hospital if profile else None,
            patient=patient,
            study=study,
            purpose=purpose or "",
            basis=basis or "",
            details=details or {},
        )
