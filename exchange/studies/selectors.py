"""Reads of the study index that carry a rule: every one goes through consent.policy."""

from dataclasses import dataclass

from consent import policy
from exchange.studies.models import Availability, Instance, Series, Study


class NotFound(Exception):
    pass


@dataclass
class Denied(Exception):
    decision: policy.Decision
    study: Study


def studies_for_read(actor, study_uid: str) -> list[Study]:
    """The visible studies with this StudyInstanceUID (normally one). Raises Denied with the
    policy's decision if the study exists but the actor may not see it, NotFound otherwise."""
    visible = list(policy.visible_studies(actor, Study.objects.filter(study_instance_uid=study_uid)).select_related("patient", "hospital"))
    allowed = []
    for study in visible:
        decision = policy.decide(actor, study.patient, policy.purpose_for(actor), study=study)
        if decision.allowed:
            allowed.append((study, decision))
    if allowed:
        return [s for s, _ in allowed]
    # A study its archive no longer holds is simply not found (policy.decide also refuses it).
    hidden = (Study.objects.filter(study_instance_uid=study_uid).exclude(availability=Availability.WITHDRAWN)
              .select_related("patient", "hospital").first())
    if hidden is None:
        raise NotFound("no such study")
    raise Denied(policy.decide(actor, hidden.patient, policy.purpose_for(actor), study=hidden), hidden)


def instances_in(studies: list[Study], series_uid: str | None = None, sop_uid: str | None = None) -> list[Instance]:
    """Instances of the given (visible) studies. Two hospitals may hold copies of one study
    (decisions/0003): each SOP Instance UID is returned once, from the first copy."""
    # The source endpoint (and its hospital, the calling AE of a DIMSE connector) comes in the same
    # query: the retrieve proxy needs it per instance of a federated study.
    qs = Instance.objects.filter(series__study__in=studies).select_related("series__study__source_endpoint__hospital")
    if series_uid:
        qs = qs.filter(series__series_instance_uid=series_uid)
    if sop_uid:
        qs = qs.filter(sop_instance_uid=sop_uid)
    seen: set[str] = set()
    out = []
    for instance in qs.order_by("series__series_number", "series__id", "instance_number", "id"):
        if instance.sop_instance_uid not in seen:
            seen.add(instance.sop_instance_uid)
            out.append(instance)
    return out


def series_in(studies: list[Study]):
    return Series.objects.filter(study__in=studies).select_related("study").order_by("series_number", "id")
