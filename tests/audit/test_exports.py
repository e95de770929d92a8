"""Audit exports (audit/exports.py: DICOM PS3.15 A.5.1 XML, FHIR R4 AuditEvent bundle, CSV),
streamed and audited, and forwarding to a syslog collector (audit/syslog.py: RFC 5424 messages,
RFC 6587 octet counting, RFC 5425 TLS)."""

import base64
import csv
import datetime as dt
import io
import json
import socketserver
import ssl
import threading
from xml.etree import ElementTree as ET

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.db import transaction
from django.db.models import QuerySet

from audit import exports, record, syslog
from audit.chain import event_hash
from audit.models import AuditEvent, Event, Outcome
from tests.audit.test_pages import login, make_study, view

pytestmark = pytest.mark.django_db


@pytest.fixture
def sample(hospital_a, clinician_b, clinician_a):
    """One event of each kind that matters to the code mapping, about one study of hospital A."""
    study = make_study(hospital_a)
    events = {
        "accessed": view(clinician_b, study),
        "denied": view(clinician_a, make_study(hospital_a), event=Event.ACCESS_DENIED, outcome=Outcome.MINOR_FAILURE,
                       reason="no consent"),
        "query": record(Event.QUERY, clinician_b, purpose="treatment", details={"query": {"PatientID": "P1"}}),
        "login_failed": record(Event.USER_AUTHENTICATION, None, Outcome.MINOR_FAILURE,
                               details={"action": "login", "username": "mallory"}),
        # As consent.services.break_glass_open writes it.
        "break_glass": record(Event.BREAK_GLASS, clinician_b, study=study, purpose="treatment", basis="break_glass",
                              details={"flagged": True, "reason": "unconscious", "reason_text": "found unconscious"}),
        "consent": record(Event.CONSENT_CHANGE, None, patient=study.patient, details={"action": "revoke"}),
    }
    return study, events


def body(response) -> bytes:
    assert response.streaming is True
    return b"".join(response.streaming_content)


def by_seq(messages, seq_of):
    return {seq_of(m): m for m in messages}


# --- DICOM -------------------------------------------------------------------------------------------

def test_dicom_audit_messages(sample, regulator):
    study, e = sample
    response = login(regulator).get("/audit/export", {"format": "dicom"})
    assert response["Content-Type"] == "application/xml; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="audit-trail-')
    root = ET.fromstring(body(response))
    assert root.tag == "AuditMessages"
    messages = root.findall("AuditMessage")
    assert len(messages) == AuditEvent.objects.count()  # the export's own event included

    def event_of(kind):
        wanted = exports.format_timestamp(e[kind].timestamp)
        [message] = [m for m in messages if m.find("EventIdentification").get("EventDateTime") == wanted]
        return message

    accessed = event_of("accessed")
    ident = accessed.find("EventIdentification")
    assert (ident.get("EventActionCode"), ident.get("EventOutcomeIndicator")) == ("R", "0")
    assert ident.find("EventID").attrib == {"csd-code": "110103", "codeSystemName": "DCM",
                                            "originalText": "DICOM Instances Accessed"}
    assert ident.find("PurposeOfUse").get("csd-code") == "TREAT"
    person, application = accessed.findall("ActiveParticipant")
    assert (person.get("UserID"), person.get("UserIsRequestor"), person.get("UserName")) == ("dr_b", "true",
                                                                                           "dr_b (CITY1)")
    assert person.find("RoleIDCode").get("csd-code") == "clinician"
    assert application.get("UserIsRequestor") == "false" and application.find("RoleIDCode").get("csd-code") == "110150"
    assert accessed.find("AuditSourceIdentification").get("AuditSourceID") == exports.AUDIT_SOURCE_ID
    patient, studyobj = accessed.findall("ParticipantObjectIdentification")
    assert patient.attrib == {"ParticipantObjectID": str(study.patient.enterprise_id),
                              "ParticipantObjectTypeCode": "1", "ParticipantObjectTypeCodeRole": "1"}
    assert studyobj.attrib == {"ParticipantObjectID": study.study_instance_uid,
                               "ParticipantObjectTypeCode": "2", "ParticipantObjectTypeCodeRole": "3"}
    assert studyobj.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"
    # Patient names stay out of machine exports: the enterprise id identifies the patient.
    assert b"XiaoDong" not in ET.tostring(accessed)

    codes = {kind: event_of(kind).find("EventIdentification/EventID") for kind in e}
    assert {k: (c.get("csd-code"), c.get("codeSystemName")) for k, c in codes.items()} == {
        "accessed": ("110103", "DCM"), "denied": ("access_denied", "EXCHANGE"), "query": ("110112", "DCM"),
        "login_failed": ("110114", "DCM"), "break_glass": ("110113", "DCM"), "consent": ("consent_change", "EXCHANGE"),
    }
    assert event_of("denied").find("EventIdentification").get("EventOutcomeIndicator") == "4"
    assert event_of("break_glass").find("EventIdentification/EventTypeCode").get("csd-code") == "110127"
    failed = event_of("login_failed")
    assert failed.find("EventIdentification/EventTypeCode").get("csd-code") == "110122"
    assert failed.find("ActiveParticipant").get("UserID") == "mallory"
    query = event_of("query").find("ParticipantObjectIdentification")
    assert query.get("ParticipantObjectTypeCodeRole") == "24"
    assert json.loads(base64.b64decode(query.find("ParticipantObjectQuery").text)) == {"PatientID": "P1"}


def test_every_event_value_has_a_code():
    assert set(exports.EVENT_IDS) == set(Event.values)


# --- FHIR ------------------------------------------------------------------------------------------------

def test_fhir_bundle(sample, regulator):
    study, e = sample
    response = login(regulator).get("/audit/export/", {"format": "fhir", "hospital": "CITY1"})
    assert response["Content-Type"] == "application/fhir+json; charset=utf-8"
    bundle = json.loads(body(response))
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    resources = by_seq([entry["resource"] for entry in bundle["entry"]], lambda r: int(r["id"].removeprefix("audit-")))
    assert all(r["resourceType"] == "AuditEvent" for r in resources.values())
    assert all(entry["fullUrl"].startswith("urn:uuid:") for entry in bundle["entry"])
    # Hospital B acted in the view, the query and the break-glass (and the export's audit event).
    assert {e["accessed"].seq, e["query"].seq, e["break_glass"].seq} <= set(resources)
    assert e["denied"].seq not in resources

    accessed = resources[e["accessed"].seq]
    assert accessed["type"] == {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110103",
                                "display": "DICOM Instances Accessed"}
    assert (accessed["action"], accessed["outcome"]) == ("R", "0")
    assert accessed["recorded"] == exports.format_timestamp(e["accessed"].timestamp)
    person, hospital = accessed["agent"]
    assert person["who"]["identifier"]["value"] == "dr_b" and person["requestor"] is True
    assert person["policy"] == ["urn:exchange:basis:consent"]
    assert hospital["who"]["identifier"]["value"] == "CITY1" and hospital["requestor"] is False
    assert accessed["source"]["observer"]["display"] == exports.AUDIT_SOURCE_ID
    patient, studyentity = accessed["entity"]
    assert patient["what"]["identifier"]["value"] == str(study.patient.enterprise_id)
    assert (patient["type"]["code"], patient["role"]["code"]) == ("1", "1")
    assert studyentity["what"]["identifier"]["value"] == f"urn:oid:{study.study_instance_uid}"
    assert (studyentity["type"]["code"], studyentity["role"]["code"]) == ("2", "3")
    assert resources[e["break_glass"].seq]["subtype"][0]["code"] == "110127"
    assert resources[e["break_glass"].seq]["purposeOfEvent"][0]["coding"][0]["code"] == "ETREAT"


def test_fhir_outcome_codes(sample, regulator):
    _, e = sample
    bundle = json.loads(body(login(regulator).get("/audit/export", {"format": "fhir", "outcome": "4"})))
    resources = by_seq([entry["resource"] for entry in bundle["entry"]], lambda r: int(r["id"].removeprefix("audit-")))
    assert set(resources) == {e["denied"].seq, e["login_failed"].seq}
    assert {r["outcome"] for r in resources.values()} == {"4"}
    assert resources[e["denied"].seq]["outcomeDesc"] == "no consent"
    assert resources[e["denied"].seq]["type"]["system"] == exports.LOCAL_URI


# --- CSV ------------------------------------------------------------------------------------------------

def test_csv_export_has_the_columns_and_recomputes_every_hash(sample, regulator):
    study, e = sample
    response = login(regulator).get("/audit/export", {"format": "csv"})
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(body(response).decode())))
    assert tuple(rows[0]) == exports.CSV_COLUMNS
    assert [int(r["seq"]) for r in rows] == sorted(int(r["seq"]) for r in rows)
    accessed = next(r for r in rows if int(r["seq"]) == e["accessed"].seq)
    assert (accessed["event"], accessed["actor_name"], accessed["actor_hospital"], accessed["patient"],
            accessed["patient_name"], accessed["study_instance_uid"], accessed["study_hospital"]) == (
        "instances_accessed", "dr_b", "CITY1", str(study.patient.enterprise_id), "王 小东 / Wang XiaoDong",
        study.study_instance_uid, "PPH")

    # An independent verifier needs nothing but the file.
    previous = "0" * 64
    for row in rows:
        fields = {name: row[name] for name in ("event", "outcome", "actor_name", "actor_role", "purpose", "basis")}
        fields.update({name: int(row[name]) if row[name] else None
                       for name in ("actor_id", "actor_hospital_id", "patient_id", "study_id")})
        fields.update(seq=int(row["seq"]), details=json.loads(row["details"]), prev_hash=row["prev_hash"],
                      timestamp=dt.datetime.strptime(row["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC))
        assert row["prev_hash"] == previous
        assert event_hash(fields) == row["hash"]
        previous = row["hash"]


def test_patient_names_cannot_become_spreadsheet_formulas(hospital_a, clinician_a, regulator):
    from tests.audit.test_pages import make_patient

    view(clinician_a, make_study(hospital_a, make_patient(name="=HYPERLINK(x)", ideographic="")))
    rows = list(csv.DictReader(io.StringIO(body(login(regulator).get("/audit/events/", {"format": "csv"})).decode())))
    assert [r["patient_name"] for r in rows if r["patient_name"]] == ["'=HYPERLINK(x)"]


# --- streaming, filters and auditing of exports ------------------------------------------------------------

def test_exports_are_streamed_filtered_and_audited(sample, regulator):
    study, e = sample
    client = login(regulator)
    response = client.get("/audit/export", {"format": "csv", "patient": str(study.patient.enterprise_id)})
    assert response.streaming is True
    exported = AuditEvent.objects.filter(event=Event.EXPORT, actor=regulator).get()
    assert exported.patient == study.patient
    assert exported.details == {"page": "audit_export", "format": "csv",
                                "filters": {"patient": str(study.patient.enterprise_id)}}
    rows = list(csv.DictReader(io.StringIO(body(response).decode())))
    # The export's own audit event is about the patient too, and is written before the bytes leave.
    assert [int(r["seq"]) for r in rows] == [e["accessed"].seq, e["break_glass"].seq, e["consent"].seq, exported.seq]


def test_search_csv_is_the_export_format(sample, regulator):
    response = login(regulator).get("/audit/events/", {"format": "csv", "event": Event.BREAK_GLASS})
    rows = list(csv.DictReader(io.StringIO(body(response).decode())))
    assert [r["event"] for r in rows] == ["break_glass"]
    assert AuditEvent.objects.filter(event=Event.EXPORT, details__page="audit_events").exists()


def test_export_reads_the_trail_in_chunks(sample, monkeypatch):
    seen = []
    original = QuerySet.iterator

    def spy(self, chunk_size=None):
        seen.append(chunk_size)
        return original(self, chunk_size=chunk_size)

    monkeypatch.setattr(type(AuditEvent.objects.all()), "iterator", spy)
    text = "".join(exports.export_stream(AuditEvent.objects.all(), exports.ExportFormat.DICOM))
    assert seen == [exports.CHUNK_SIZE] and text.count("<AuditMessage>") == AuditEvent.objects.count()


def test_bad_export_requests(regulator, db):
    client = login(regulator)
    assert client.get("/audit/export").status_code == 200  # the form
    assert client.get("/audit/export", {"format": "pdf"}).status_code == 400
    assert client.get("/audit/export", {"format": "csv", "patient": "x"}).status_code == 400


# --- syslog forwarding ---------------------------------------------------------------------------------------

class Collector(socketserver.ThreadingTCPServer):
    """A tiny syslog collector on 127.0.0.1: keeps the raw bytes of every connection."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, tls_context: ssl.SSLContext | None = None):
        self.received = bytearray()
        self.got = threading.Event()
        self.tls_context = tls_context
        super().__init__(("127.0.0.1", 0), CollectorHandler)

    def get_request(self):
        sock, address = super().get_request()
        if self.tls_context is not None:
            sock = self.tls_context.wrap_socket(sock, server_side=True)
        return sock, address

    def wait_for(self, n_messages: int, timeout: float = 5.0) -> list[bytes]:
        for _ in range(int(timeout * 20)):
            messages = parse_frames(bytes(self.received))
            if len(messages) >= n_messages:
                return messages
            self.got.wait(0.05)
            self.got.clear()
        raise AssertionError(f"collector received {bytes(self.received)[:200]!r}")


class CollectorHandler(socketserver.BaseRequestHandler):
    def handle(self):
        while chunk := self.request.recv(65536):
            self.server.received.extend(chunk)
            self.server.got.set()


def parse_frames(data: bytes) -> list[bytes]:
    """RFC 6587 octet counting: MSG-LEN SP SYSLOG-MSG, repeated; an incomplete tail is ignored."""
    messages = []
    while data:
        length, _, rest = data.partition(b" ")
        assert length.isdigit(), data[:40]
        if len(rest) < int(length):
            break
        messages.append(rest[:int(length)])
        data = rest[int(length):]
    return messages


@pytest.fixture
def collector():
    servers = []

    def start(tls_context=None) -> Collector:
        server = Collector(tls_context)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
    if syslog._forwarder is not None:
        syslog._forwarder.close()


def check_message(message: bytes, event: AuditEvent) -> None:
    header, _, xml = message.partition(b"<?xml")
    # <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG
    pri_version, timestamp, host, app, procid, msgid, sd = header.decode().rstrip(" ").split(" ")
    assert (pri_version, app, msgid, sd) == ("<85>1", "exchange", "IHE+RFC-3881", "-")
    assert timestamp == exports.format_timestamp(event.timestamp) and host and procid.isdigit()
    root = ET.fromstring(b"<?xml" + xml)
    assert root.tag == "AuditMessage"
    assert root.find("EventIdentification/EventID").get("csd-code") == "110103"
    assert root.find("ParticipantObjectIdentification").get("ParticipantObjectID") == str(event.patient.enterprise_id)


# The test's own transaction never commits: django_capture_on_commit_callbacks(execute=True)
# runs what would run at commit when its block ends.

def test_forward_sends_framed_rfc5424_after_commit(collector, settings, hospital_a, clinician_b,
                                                   django_capture_on_commit_callbacks):
    server = collector()
    settings.AUDIT_SYSLOG_ADDRESS = f"127.0.0.1:{server.server_address[1]}"
    settings.AUDIT_SYSLOG_TLS = False
    study = make_study(hospital_a)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with transaction.atomic():
            # record() forwards each event once the transaction commits.
            first = view(clinician_b, study)
            second = view(clinician_b, study)
        assert server.received == b""  # nothing before the commit
    assert len(callbacks) == 2
    messages = server.wait_for(2)
    assert len(messages) == 2
    for message, event in zip(messages, (first, second)):
        check_message(message, event)


def test_rolled_back_events_are_not_forwarded(collector, settings, hospital_a, clinician_b,
                                              django_capture_on_commit_callbacks):
    server = collector()
    settings.AUDIT_SYSLOG_ADDRESS = f"127.0.0.1:{server.server_address[1]}"
    study = make_study(hospital_a)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(RuntimeError):
            with transaction.atomic():
                view(clinician_b, study)
                raise RuntimeError("the action failed")
        with transaction.atomic():
            kept = view(clinician_b, study)
    assert len(callbacks) == 1
    [message] = server.wait_for(1)
    check_message(message, kept)


def test_forward_does_nothing_unless_configured(settings, hospital_a, clinician_b, django_capture_on_commit_callbacks):
    settings.AUDIT_SYSLOG_ADDRESS = ""
    with django_capture_on_commit_callbacks() as callbacks:
        syslog.forward(view(clinician_b, make_study(hospital_a)))
    assert callbacks == []


def test_an_unreachable_collector_is_logged_not_raised(settings, hospital_a, clinician_b, caplog):
    settings.AUDIT_SYSLOG_ADDRESS = "127.0.0.1:9"  # discard port: nothing listens
    event = view(clinician_b, make_study(hospital_a))
    assert syslog.send(event) is False
    assert f"event seq {event.seq} not forwarded" in caplog.text
    assert str(event.patient.enterprise_id) not in caplog.text


def self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "collector.pem", tmp_path / "collector.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_tls_collector_checked_against_the_ca_file(collector, settings, tmp_path, hospital_a, clinician_b):
    cert_file, key_file = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server = collector(context)
    settings.AUDIT_SYSLOG_ADDRESS = f"localhost:{server.server_address[1]}"
    settings.AUDIT_SYSLOG_TLS = True
    event = view(clinician_b, make_study(hospital_a))

    settings.AUDIT_SYSLOG_CA_FILE = ""  # the system's CAs do not know this collector
    assert syslog.send(event) is False

    settings.AUDIT_SYSLOG_CA_FILE = str(cert_file)
    assert syslog.send(event) is True
    [message] = server.wait_for(1)
    check_message(message, event)


def test_address_parsing():
    assert syslog.parse_address("collector.example:6514", True) == ("collector.example", 6514)
    assert syslog.parse_address("collector.example", True) == ("collector.example", 6514)
    assert syslog.parse_address("collector.example", False) == ("collector.example", 514)
    assert syslog.parse_address("[::1]:1514", False) == ("::1", 1514)
    assert syslog.frame(b"<85>1 x") == b"7 <85>1 x"
