"""The audit trail in standard formats, streamed (issue #4, docs/decisions/0007-audit-exports.md).

- DICOM audit messages (PS3.15 A.5.1 schema; IHE ATNA): one <AuditMessage> per event; a file
  holds them in an <AuditMessages> root element (the schema defines one message, not a file).
- FHIR R4: a Bundle (type collection) of AuditEvent resources, as JSON.
- CSV: one row per event, with every field the chain hash covers (audit/chain.py), so anyone can
  recompute each event's hash and each link from the file alone.

Exports read the trail with QuerySet.iterator() and yield text as they go: a year of a
province's trail never sits in memory.
"""

import base64
import csv
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from xml.etree import ElementTree as ET

from django.db import models
from django.db.models import F, QuerySet

from audit.chain import format_timestamp
from audit.models import AuditEvent, Event, Outcome

CHUNK_SIZE = 500
AUDIT_SOURCE_ID = "provincial-image-exchange"

DCM = "DCM"  # PS3.16 DICOM Controlled Terminology (codeSystemName in PS3.15 messages)
DCM_URI = "http://dicom.nema.org/resources/ontology/DCM"  # the same, as a FHIR code system
# Our own codes, for events DICOM has no code for. Documented in ADR 0007.
LOCAL = "EXCHANGE"
LOCAL_URI = "urn:exchange:audit-event"
ROLE_SYSTEM = "EXCHANGE-ROLE"
ROLE_URI = "urn:exchange:role"
ACT_REASON = "2.16.840.1.113883.5.8"  # HL7 v3 ActReason (purpose of use)
ACT_REASON_URI = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


class ExportFormat(models.TextChoices):
    DICOM = "dicom", "DICOM audit messages (XML)"
    FHIR = "fhir", "FHIR R4 AuditEvent bundle (JSON)"
    CSV = "csv", "CSV"


CONTENT_TYPES = {
    ExportFormat.DICOM: "application/xml; charset=utf-8",
    ExportFormat.FHIR: "application/fhir+json; charset=utf-8",
    ExportFormat.CSV: "text/csv; charset=utf-8",
}
FILE_EXTENSIONS = {ExportFormat.DICOM: "xml", ExportFormat.FHIR: "json", ExportFormat.CSV: "csv"}


@dataclass(frozen=True)
class Code:
    code: str
    system: str  # PS3.15 codeSystemName
    display: str

    @property
    def uri(self) -> str:
        return {DCM: DCM_URI, LOCAL: LOCAL_URI, ROLE_SYSTEM: ROLE_URI, ACT_REASON: ACT_REASON_URI}[self.system]

    def fhir(self) -> dict:
        return {"system": self.uri, "code": self.code, "display": self.display}


def _dcm(code: str, display: str) -> Code:
    return Code(code, DCM, display)


# PS3.15 A.5.3 event IDs and EventActionCode (C create, R read, U update, D delete, E execute).
EVENT_IDS: dict[str, tuple[Code, str]] = {
    Event.QUERY: (_dcm("110112", "Query"), "E"),
    Event.INSTANCES_ACCESSED: (_dcm("110103", "DICOM Instances Accessed"), "R"),
    Event.INSTANCES_TRANSFERRED: (_dcm("110104", "DICOM Instances Transferred"), "R"),
    # A.5.3.5: storing received instances is "DICOM Instances Transferred" with action C.
    Event.INSTANCES_STORED: (_dcm("110104", "DICOM Instances Transferred"), "C"),
    Event.IMPORT: (_dcm("110107", "Import"), "C"),
    Event.EXPORT: (_dcm("110106", "Export"), "R"),
    Event.USER_AUTHENTICATION: (_dcm("110114", "User Authentication"), "E"),
    Event.PATIENT_RECORD: (_dcm("110110", "Patient Record"), "U"),
    Event.SECURITY_ALERT: (_dcm("110113", "Security Alert"), "E"),
    # A.5.3.11: an emergency override is a Security Alert of type 110127 (see EVENT_TYPES).
    Event.BREAK_GLASS: (_dcm("110113", "Security Alert"), "E"),
    Event.ACCESS_DENIED: (Code("access_denied", LOCAL, "Access denied"), "E"),
    Event.ADMIN_CHANGE: (Code("admin_change", LOCAL, "Administrative change"), "U"),
    Event.CONSENT_CHANGE: (Code("consent_change", LOCAL, "Consent change"), "U"),
    Event.SHARE_LINK_USE: (Code("share_link_use", LOCAL, "Share link use"), "R"),
}
BEGIN_TRANSFERRING = _dcm("110102", "Begin Transferring DICOM Instances")
LOGIN, LOGOUT = _dcm("110122", "Login"), _dcm("110123", "Logout")
EMERGENCY_OVERRIDE_STARTED = _dcm("110127", "Emergency Override Started")
APPLICATION = _dcm("110150", "Application")
STUDY_INSTANCE_UID = _dcm("110180", "Study Instance UID")
SOP_CLASS_UID = _dcm("110181", "SOP Class UID")
# The query participant of a Query event names the information model queried (PS3.15 A.5.3.12).
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PURPOSES = {
    "treatment": Code("TREAT", ACT_REASON, "treatment"),
    "emergency": Code("ETREAT", ACT_REASON, "emergency treatment"),
    "break_glass": Code("ETREAT", ACT_REASON, "emergency treatment"),
    "patient_self": Code("PATRQT", ACT_REASON, "patient requested"),
    "oversight": Code("HCOMPL", ACT_REASON, "health compliance"),
}


def purpose_of_use(event: AuditEvent) -> Code | None:
    # Break-glass access is recorded with purpose "treatment" and basis "break_glass" (consent.services).
    if event.event == Event.BREAK_GLASS or event.basis == "break_glass":
        return PURPOSES["emergency"]
    return PURPOSES.get(event.purpose)


def event_id(event: AuditEvent) -> tuple[Code, str]:
    code, action = EVENT_IDS[event.event]
    if event.event == Event.INSTANCES_TRANSFERRED and event.details.get("phase") == "begin":
        code = BEGIN_TRANSFERRING
    return code, action


def event_types(event: AuditEvent) -> list[Code]:
    if event.event == Event.BREAK_GLASS:
        return [EMERGENCY_OVERRIDE_STARTED]
    if event.event == Event.USER_AUTHENTICATION:
        action = event.details.get("action")
        return [LOGIN] if action == "login" else [LOGOUT] if action == "logout" else []
    return []


def user_id(event: AuditEvent) -> str:
    # A failed login has no account: the name that was tried is what the auditor needs.
    return event.actor_name or str(event.details.get("username", "")) or "unknown"


def query_bytes(event: AuditEvent) -> bytes:
    query = event.details.get("query", event.details.get("filters", {}))
    return json.dumps(query, sort_keys=True, ensure_ascii=False).encode()


# --- DICOM PS3.15 A.5.1 ------------------------------------------------------------------------

def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code.code, "codeSystemName": code.system,
                                       "originalText": code.display})


def audit_message(event: AuditEvent) -> ET.Element:
    """One DICOM audit message (PS3.15 A.5.1) for one event. Needs actor_hospital, patient and
    study loaded (select_related) to avoid a query per event."""
    code, action = event_id(event)
    message = ET.Element("AuditMessage")
    identification = ET.SubElement(message, "EventIdentification", {
        "EventActionCode": action,
        "EventDateTime": format_timestamp(event.timestamp),
        "EventOutcomeIndicator": event.outcome,
    })
    _coded(identification, "EventID", code)
    for event_type in event_types(event):
        _coded(identification, "EventTypeCode", event_type)
    purpose = purpose_of_use(event)
    if purpose is not None:
        _coded(identification, "PurposeOfUse", purpose)

    person = {"UserID": user_id(event), "UserIsRequestor": "true"}
    if event.actor_hospital is not None:
        # The hospital the user acted for; PS3.15 has no element for it (ADR 0007).
        person["UserName"] = f"{user_id(event)} ({event.actor_hospital.code})"
    participant = ET.SubElement(message, "ActiveParticipant", person)
    if event.actor_role:
        _coded(participant, "RoleIDCode", Code(event.actor_role, ROLE_SYSTEM, event.actor_role))
    application = ET.SubElement(message, "ActiveParticipant", {"UserID": AUDIT_SOURCE_ID, "UserIsRequestor": "false"})
    _coded(application, "RoleIDCode", APPLICATION)

    source = ET.SubElement(message, "AuditSourceIdentification", {"AuditSourceID": AUDIT_SOURCE_ID})
    # RFC 3881 audit source type 4: application server process.
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": "4", "codeSystemName": DCM,
                                                  "originalText": "Application Server"})

    if event.patient is not None:
        patient = ET.SubElement(message, "ParticipantObjectIdentification", {
            "ParticipantObjectID": str(event.patient.enterprise_id),
            "ParticipantObjectTypeCode": "1",  # person
            "ParticipantObjectTypeCodeRole": "1",  # patient
        })
        ET.SubElement(patient, "ParticipantObjectIDTypeCode", {"csd-code": "2", "codeSystemName": "RFC-3881",
                                                               "originalText": "Patient Number"})
    if event.study is not None:
        study = ET.SubElement(message, "ParticipantObjectIdentification", {
            "ParticipantObjectID": event.study.study_instance_uid,
            "ParticipantObjectTypeCode": "2",  # system object
            "ParticipantObjectTypeCodeRole": "3",  # report
        })
        _coded(study, "ParticipantObjectIDTypeCode", STUDY_INSTANCE_UID)
    if event.event == Event.QUERY:
        query = ET.SubElement(message, "ParticipantObjectIdentification", {
            "ParticipantObjectID": STUDY_ROOT_FIND,
            "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "24",  # query
        })
        _coded(query, "ParticipantObjectIDTypeCode", SOP_CLASS_UID)
        ET.SubElement(query, "ParticipantObjectQuery").text = base64.b64encode(query_bytes(event)).decode("ascii")
    return message


def audit_message_xml(event: AuditEvent) -> bytes:
    """The message as a standalone UTF-8 XML document (a syslog message body)."""
    return ET.tostring(audit_message(event), encoding="utf-8", xml_declaration=True)


def dicom_stream(events: Iterable[AuditEvent]) -> Iterator[str]:
    yield '<?xml version="1.0" encoding="UTF-8"?>\n<AuditMessages>\n'
    for event in events:
        yield ET.tostring(audit_message(event), encoding="unicode") + "\n"
    yield "</AuditMessages>\n"


# --- FHIR R4 AuditEvent ------------------------------------------------------------------------

ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ROLE_CLASS = "http://terminology.hl7.org/CodeSystem/v3-RoleClass"


def fhir_audit_event(event: AuditEvent) -> dict:
    """FHIR R4 AuditEvent for one event (outcome codes 0/4/8/12 are PS3.15's)."""
    code, action = event_id(event)
    agent = {
        "who": {"identifier": {"system": "urn:exchange:user", "value": user_id(event)}, "display": user_id(event)},
        "requestor": True,
    }
    if event.actor_role:
        agent["role"] = [{"coding": [{"system": ROLE_URI, "code": event.actor_role}]}]
    if event.basis:
        agent["policy"] = [f"urn:exchange:basis:{event.basis}"]
    purpose = purpose_of_use(event)
    if purpose is not None:
        agent["purposeOfUse"] = [{"coding": [purpose.fhir()]}]
    agents = [agent]
    if event.actor_hospital is not None:
        agents.append({
            "type": {"coding": [{"system": ROLE_CLASS, "code": "PROV", "display": "healthcare provider"}]},
            "who": {"identifier": {"system": "urn:exchange:hospital", "value": event.actor_hospital.code},
                    "display": event.actor_hospital.name},
            "requestor": False,
        })
    resource = {
        "resourceType": "AuditEvent",
        "id": f"audit-{event.seq}" if event.seq is not None else f"audit-unsealed-{event.pk}",
        "type": code.fhir(),
        "action": action,
        "recorded": format_timestamp(event.timestamp),
        "outcome": event.outcome,
        "agent": agents,
        "source": {"observer": {"display": AUDIT_SOURCE_ID},
                   "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}]},
    }
    subtypes = event_types(event)
    if subtypes:
        resource["subtype"] = [c.fhir() for c in subtypes]
    if event.outcome != Outcome.SUCCESS and event.details.get("reason"):
        resource["outcomeDesc"] = str(event.details["reason"])
    if purpose is not None:
        resource["purposeOfEvent"] = [{"coding": [purpose.fhir()]}]
    entities = []
    if event.patient is not None:
        entities.append({
            "what": {"identifier": {"system": "urn:exchange:enterprise-patient-id",
                                    "value": str(event.patient.enterprise_id)}},
            "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
            "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
        })
    if event.study is not None:
        entities.append({
            "what": {"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{event.study.study_instance_uid}"}},
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "3", "display": "Report"},
        })
    if event.event == Event.QUERY:
        entities.append({
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
            "query": base64.b64encode(query_bytes(event)).decode("ascii"),
        })
    if entities:
        resource["entity"] = entities
    return resource


def _entry_uuid(event: AuditEvent) -> uuid.UUID:
    """Stable per event: from its chain hash once sealed, from its id before (sequencer mode)."""
    return uuid.UUID(event.hash[:32]) if event.hash else uuid.uuid5(uuid.NAMESPACE_URL, f"urn:exchange:audit:{event.pk}")


def fhir_stream(events: Iterable[AuditEvent]) -> Iterator[str]:
    now = format_timestamp(datetime.now(UTC))
    yield f'{{"resourceType":"Bundle","type":"collection","timestamp":"{now}","entry":['
    separator = "\n"
    for event in events:
        entry = {"fullUrl": f"urn:uuid:{_entry_uuid(event)}", "resource": fhir_audit_event(event)}
        yield separator + json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
        separator = ",\n"
    yield "\n]}\n"


# --- CSV ---------------------------------------------------------------------------------------

CSV_COLUMNS = (
    "seq", "timestamp", "event", "outcome", "actor_id", "actor_name", "actor_role", "actor_hospital_id",
    "actor_hospital", "patient_id", "patient", "patient_name", "study_id", "study_instance_uid", "study_hospital",
    "purpose", "basis", "details", "prev_hash", "hash",
)


class _Echo:
    """A file-like object whose write returns the line, for csv.writer in a generator."""

    def write(self, value: str) -> str:
        return value


def spreadsheet_safe(text: str) -> str:
    """Neutralise text that a spreadsheet would run as a formula (CSV injection); for free text
    from outside (patient names from DICOM headers), not for fields the chain hash covers."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_row(event: AuditEvent) -> tuple:
    return (
        event.seq, format_timestamp(event.timestamp), event.event, event.outcome,
        event.actor_id or "", event.actor_name, event.actor_role, event.actor_hospital_id or "",
        event.actor_hospital.code if event.actor_hospital else "",
        event.patient_id or "", str(event.patient.enterprise_id) if event.patient else "",
        spreadsheet_safe(event.patient.display_name) if event.patient else "",
        event.study_id or "", event.study.study_instance_uid if event.study else "",
        event.study.hospital.code if event.study else "",
        event.purpose, event.basis,
        # As the chain hashes it (audit/chain.py): sorted keys, no whitespace, ASCII.
        json.dumps(event.details, sort_keys=True, separators=(",", ":")),
        event.prev_hash, event.hash,
    )


def csv_stream(events: Iterable[AuditEvent]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    for event in events:
        yield writer.writerow(csv_row(event))


STREAMS = {ExportFormat.DICOM: dicom_stream, ExportFormat.FHIR: fhir_stream, ExportFormat.CSV: csv_stream}


def export_stream(events: QuerySet[AuditEvent], fmt: str) -> Iterator[str]:
    """The events in chain (seq) order, in ``fmt``, read from the database in chunks; events not
    sealed yet (sequencer mode, seconds old) come last, with an empty seq and hashes."""
    rows = (events.select_related("actor_hospital", "patient", "study", "study__hospital")
            .order_by(F("seq").asc(nulls_last=True), "id"))
    return STREAMS[fmt](rows.iterator(chunk_size=CHUNK_SIZE))
