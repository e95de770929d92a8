"""Reads of the consent app that carry a rule (what a patient sees of their own record)."""

from audit.models import AuditEvent, Event
from consent import policy
from exchange.studies.models import Study

# Events that show someone reading (or trying to read) the patient's images.
ACCESS_EVENTS = [Event.INSTANCES_ACCESSED, Event.INSTANCES_TRANSFERRED, Event.BREAK_GLASS, Event.SHARE_LINK_USE,
                 Event.ACCESS_DENIED]


def portal_studies(user) -> list[Study]:
    """The patient's studies across hospitals, through the policy like every other read."""
    qs = policy.visible_studies(user).select_related("hospital").order_by("-study_date", "-id")
    return list(qs[:500])


def access_history(patient, limit: int = 200) -> list[dict]:
    """Who read this patient's images, when, from which hospital, on what basis: newest first,
    consecutive reads of one study by one person in one hour shown once (a viewer page loads
    many images)."""
    rows = (AuditEvent.objects.filter(patient=patient, event__in=ACCESS_EVENTS)
            .select_related("actor_hospital", "study__hospital").order_by("-seq")[: limit * 10])
    out: list[dict] = []
    for ev in rows:
        key = (ev.event, ev.actor_name, ev.study_id, ev.basis, ev.outcome, ev.timestamp.strftime("%Y%m%d%H"))
        if out and out[-1]["key"] == key:
            out[-1]["count"] += 1
            continue
        if len(out) >= limit:
            break
        if ev.actor_role == "patient":
            who = "You"
        elif ev.event == Event.SHARE_LINK_USE:
            who = "Someone with your share link"
        else:
            who = ev.actor_name or "—"
        out.append({
            "key": key, "count": 1, "when": ev.timestamp, "who": who,
            "hospital": ev.actor_hospital.name if ev.actor_hospital else "",
            "what": ev.get_event_display(), "study": ev.study, "basis": policy.basis_label(ev.basis),
            "purpose": dict(policy.Purpose.choices).get(ev.purpose, ev.purpose),
            "refused": ev.outcome != "0", "flagged": ev.event == Event.BREAK_GLASS,
            "detail": (ev.details or {}).get("action", ""),
        })
    return out


def share_link_uses(link) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(event=Event.SHARE_LINK_USE, patient=link.patient_id,
                                          details__share_link=link.pk).order_by("-seq")[:100])


def patient_by_ric(number: str):
    from exchange.mpi.identity import clean_ric, ric_blind_index
    from exchange.mpi.models import Patient

    ric = clean_ric(number)
    if ric is None:
        return None
    patient = Patient.objects.filter(ric_index=ric_blind_index(ric)).first()
    while patient is not None and patient.merged_into_id:
        patient = patient.merged_into
    return patient
