"""The platform's DIMSE SCP (``manage.py dicom_scp``), through pynetdicom: C-ECHO (PS3.7 §9.1.5),
C-STORE (PS3.4 Annex B) into the platform, and C-FIND on the platform index (PS3.4 C.4.1).

Who may associate (docs/dicom-conformance.md): the calling AE title must stand for exactly one
hospital — the remote AE title of one of its push or DIMSE endpoints that is testing, syncing or
live (and, when that endpoint names a host, the peer's address must be that host's), or else the
hospital's own registered AE title. Anyone else gets A-ASSOCIATE-RJ (rejected permanent, service
user, calling AE title not recognised; PS3.8 §9.3.4). The peer then acts as its hospital's DIMSE
service account (role ingest): C-STORE ingests under that hospital and C-FIND sees what the
consent policy lets that account see — the hospital's own studies, nothing of other hospitals.

Received data sets are written to a file by pynetdicom as they arrive (STORE_RECV_CHUNKED_DATASET)
and go through the same ingest as STOW-RS and imports (exchange.studies.services.ingest_spool).
Nothing here logs a data set or identifier: pynetdicom's identifier logging is off, and the one
line per association names AE titles, addresses and counts only.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connections, transaction
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from audit import record
from audit.models import Event, Outcome
from consent import policy
from exchange.federation import scp_find
from exchange.studies import storage
from exchange.studies.dicomfile import FailureReason
from exchange.studies.models import IngestSource
from exchange.studies.services import IngestResult, Status, batch_count, batch_finish, batch_start, ingest_spool
from hospitals.models import ArchiveEndpoint, EndpointKind, EndpointStatus, Hospital, Role

# pynetdicom logs query and answer identifiers (patient names and ids) unless told not to.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

log = logging.getLogger(__name__)

# Endpoint states whose AE title is accepted: a draft is not yet checked by anyone, a failed
# initial sync has to be tested again first.
ACCEPTING = (EndpointStatus.TESTING, EndpointStatus.SYNCING, EndpointStatus.LIVE)
# A-ASSOCIATE-RJ (result, source, reason), PS3.8 §9.3.4.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # rejected permanent, service user, calling AE title not recognised
REJECT_TRANSIENT = (0x02, 0x01, 0x01)  # rejected transient, service user, no reason given


class StoreStatus(IntEnum):
    """C-STORE response statuses (PS3.4 B.2.3; general statuses PS3.7 C.4). Failures of the
    ingest keep their FailureReason code, which is one of these."""

    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110
    NOT_AUTHORIZED = 0x0124
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000


# --- Who is calling ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    hospital: Hospital
    ae_title: str
    address: str
    # The endpoint that registers the AE title; None when it is the hospital's own AE title.
    endpoint_id: int | None = None


def _host_matches(host: str, address: str) -> bool:
    """No host registered: any address. Otherwise the peer's address must be the host's."""
    host, address = (host or "").strip(), address.removeprefix("::ffff:")
    if not host or host == address:
        return True
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return any(str(info[4][0]).removeprefix("::ffff:") == address for info in infos)


def identify_peer(calling_ae: str, address: str) -> Peer | None:
    """The hospital a calling AE title stands for, or None when it stands for none or for more
    than one. An endpoint that registers the AE title (in any state) overrides the hospital-level
    rule for its hospital, so an endpoint's host restriction cannot be sidestepped."""
    calling = (calling_ae or "").strip()
    if not calling:
        return None
    endpoints = list(ArchiveEndpoint.objects.filter(kind__in=[EndpointKind.PUSH, EndpointKind.DIMSE],
                                                    remote_ae_title=calling).select_related("hospital"))
    candidates: dict[int, Peer] = {}
    for endpoint in endpoints:
        if endpoint.status in ACCEPTING and _host_matches(endpoint.host, address):
            candidates.setdefault(endpoint.hospital_id, Peer(endpoint.hospital, calling, address, endpoint.pk))
    registered = {e.hospital_id for e in endpoints}
    for hospital in Hospital.objects.filter(ae_title=calling).exclude(pk__in=registered):
        candidates.setdefault(hospital.pk, Peer(hospital, calling, address))
    if len(candidates) > 1:
        log.warning("calling AE title %s is registered for %d hospitals: association refused", calling, len(candidates))
    return next(iter(candidates.values())) if len(candidates) == 1 else None


class ServiceAccountError(RuntimeError):
    pass


def service_account(hospital: Hospital):
    """The hospital's DIMSE service account ``dimse-<code>`` (role ingest, no password: it cannot
    log in). It is the actor of the hospital's C-STORE and C-FIND in the consent policy and the
    audit trail. Made on first use."""
    from hospitals.services import account_create

    User = get_user_model()
    username = f"dimse-{hospital.code.lower()}"
    user = User.objects.filter(username=username).select_related("profile").first()
    if user is None:
        try:
            user = account_create(username=username, role=Role.INGEST, password=None, hospital=hospital)
        except (ValidationError, IntegrityError):  # a concurrent association made it first
            user = User.objects.select_related("profile").get(username=username)
    profile = getattr(user, "profile", None)
    if not user.is_active or profile is None or profile.role != Role.INGEST or profile.hospital_id != hospital.pk:
        raise ServiceAccountError(f"account {username} exists but is not the ingest account of {hospital.code}")
    return user


# --- One association ------------------------------------------------------------------------


@dataclass
class _Session:
    address: str
    started: float = field(default_factory=time.monotonic)
    calling_ae: str = ""
    peer: Peer | None = None
    actor: object = None
    refused: str = ""
    batch: object = None
    echoes: int = 0
    stores: int = 0
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    finds: int = 0
    matches: int = 0

    def details(self) -> dict:
        return {"calling_ae": self.calling_ae, "peer_address": self.address}


def _session(assoc) -> _Session:
    session = getattr(assoc, "exchange_session", None)
    if session is None:  # an association not made by our request handler
        session = assoc.exchange_session = _Session(address=assoc.requestor.address)
    return session


def _status(code: int, comment: str = "") -> Dataset:
    status = Dataset()
    status.Status = int(code)
    if comment:
        status.ErrorComment = comment[:64]
    return status


def _on_requested(event) -> None:
    """A-ASSOCIATE-RQ received: accept only a registered calling AE title (before negotiation)."""
    assoc = event.assoc
    session = _session(assoc)
    session.calling_ae = str(assoc.requestor.primitive.calling_ae_title or "").strip()
    try:
        peer = identify_peer(session.calling_ae, session.address)
        if peer is not None:
            session.actor = service_account(peer.hospital)
            session.peer = peer
            return
        session.refused = "calling AE title not recognised"
        reject = REJECT_CALLING_AE
    except Exception as exc:  # fail closed: no database, no association
        log.error("cannot check calling AE title (%s): association refused", type(exc).__name__)
        session.refused = "cannot check the calling AE title now"
        reject = REJECT_TRANSIENT
    assoc.acse.send_reject(*reject)
    assoc.kill()


def _on_echo(event) -> int:
    """C-ECHO (PS3.7 §9.1.5): the association was accepted, so the peer is known."""
    _session(event.assoc).echoes += 1
    return StoreStatus.SUCCESS


def _received_spool(event) -> storage.Spool:
    """The received data set, as a spooled Part 10 file. pynetdicom wrote it to a file as the
    P-DATA arrived (chunked receiving); it is copied into the spool area in 1 MiB chunks, which
    also zeroes the preamble and computes the content address."""
    try:
        path = event.dataset_path
    except AttributeError:
        path = None
    if path is not None:
        with open(Path(path), "rb") as fp:
            return storage.spool_stream(fp)
    writer = storage.SpoolWriter()  # chunked receiving is off: the data set is in memory already
    try:
        writer.write(event.encoded_dataset())
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def _uid_mismatch(path: Path, sop_class_uid: str, sop_instance_uid: str) -> str:
    """PS3.4 B.2.3 0xA900: the data set's SOP Class/Instance UID must be the request's. Reads
    the header only; a file that cannot be read is left to the ingest's parser to explain."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
        found_class, found_instance = str(ds.get("SOPClassUID") or "").strip(), str(ds.get("SOPInstanceUID") or "").strip()
    except Exception:
        return ""
    if found_class and found_class != str(sop_class_uid).strip():
        return "SOPClassUID differs from the request's Affected SOP Class"
    if found_instance and found_instance != str(sop_instance_uid).strip():
        return "SOPInstanceUID differs from the request's Affected SOP Instance"
    return ""


def _store(session: _Session, event) -> IngestResult:
    if session.batch is None:
        session.batch = batch_start(hospital=session.peer.hospital, actor=session.actor, source=IngestSource.DIMSE,
                                    label=f"C-STORE from {session.calling_ae} ({session.address})")
    try:
        spool = _received_spool(event)
    except storage.TooLarge as exc:
        return IngestResult(Status.REJECTED, reason=FailureReason.OUT_OF_RESOURCES, message=str(exc))
    except OSError as exc:
        log.error("C-STORE: cannot spool the data set (%s)", type(exc).__name__)
        return IngestResult(Status.REJECTED, reason=FailureReason.OUT_OF_RESOURCES, message="cannot write to storage")
    request = event.request
    mismatch = _uid_mismatch(spool.path, request.AffectedSOPClassUID, request.AffectedSOPInstanceUID)
    if mismatch:
        spool.discard()
        return IngestResult(Status.REJECTED, reason=FailureReason.DATASET_DOES_NOT_MATCH, message=mismatch)
    try:
        return ingest_spool(spool, hospital=session.peer.hospital, actor=session.actor, source=IngestSource.DIMSE,
                            batch=session.batch, audit_details=session.details())
    finally:
        spool.discard()  # consumed by the ingest already; this only matters if it raised


def _on_store(event) -> Dataset:
    """C-STORE (PS3.4 B.2): store and index one instance for the calling hospital. A duplicate
    of a stored instance is a success; a refused one gets the ingest's failure code and reason."""
    session = _session(event.assoc)
    session.stores += 1
    if session.peer is None:
        session.failed += 1
        return _status(StoreStatus.NOT_AUTHORIZED, "calling AE title not recognised")
    try:
        result = _store(session, event)
    except Exception as exc:  # the association goes on; the type says enough to act on
        log.error("C-STORE failed (%s)", type(exc).__name__)
        result = IngestResult(Status.REJECTED, reason=FailureReason.PROCESSING_FAILURE, message="processing failure")
    if session.batch is not None:
        batch_count(session.batch, result, item=f"C-STORE {session.stores}")
    if result.status is Status.STORED:
        session.stored += 1
    elif result.status is Status.DUPLICATE:
        session.duplicates += 1
    else:
        session.failed += 1
        return _status(int(result.reason), result.message)
    return _status(StoreStatus.SUCCESS)


def _on_find(event):
    """C-FIND (PS3.4 C.4.1.2): pending answers from the platform index, audited before the first
    is sent, each checked for a C-CANCEL."""
    session = _session(event.assoc)
    session.finds += 1
    model = str(event.request.AffectedSOPClassUID)
    details = {"service": "C-FIND", "model": scp_find.MODEL_NAMES.get(model, model), **session.details()}
    if session.peer is None:
        yield _status(StoreStatus.NOT_AUTHORIZED, "calling AE title not recognised"), None
        return
    try:
        try:
            answer = scp_find.find(session.actor, model, event.identifier, settings.QIDO_MAX_LIMIT)
        except scp_find.FindRefused as exc:
            with transaction.atomic():
                record(Event.QUERY, session.actor, Outcome.MINOR_FAILURE, purpose=policy.purpose_for(session.actor),
                       details={**details, "status": f"0x{int(exc.status):04X}", "reason": exc.message})
            yield _status(exc.status, exc.message), None
            return
        with transaction.atomic():
            record(Event.QUERY, session.actor, Outcome.SUCCESS, purpose=policy.purpose_for(session.actor),
                   details={**details, "level": answer.level.lower(), "query": answer.match,
                            "results": len(answer.datasets)})
    except Exception as exc:
        log.error("C-FIND failed (%s)", type(exc).__name__)
        yield _status(scp_find.FindStatus.UNABLE_TO_PROCESS, "processing failure"), None
        return
    pending = (scp_find.FindStatus.PENDING_OPTIONAL_KEYS_NOT_SUPPORTED if answer.unsupported_keys
               else scp_find.FindStatus.PENDING)
    for identifier in answer.datasets:
        if event.is_cancelled:
            yield int(scp_find.FindStatus.CANCEL), None
            return
        session.matches += 1
        yield int(pending), identifier
    yield int(scp_find.FindStatus.SUCCESS), None


def summary_line(assoc, session: _Session) -> str:
    """One line per association: AE titles, address, hospital code, outcome, counts."""
    if session.refused:
        outcome = f"rejected ({session.refused})"
    elif assoc.is_rejected:
        outcome = "rejected"
    elif assoc.is_aborted:
        outcome = "aborted"
    elif assoc.is_released:
        outcome = "released"
    else:
        outcome = "closed"
    hospital = f" [{session.peer.hospital.code}]" if session.peer else ""
    parts = [f"association {session.calling_ae or '?'}@{session.address}{hospital}: {outcome}"]
    if session.echoes:
        parts.append(f"C-ECHO {session.echoes}")
    if session.stores:
        parts.append(f"C-STORE {session.stores} (stored {session.stored}, duplicate {session.duplicates}, "
                     f"failed {session.failed})")
    if session.finds:
        parts.append(f"C-FIND {session.finds} ({session.matches} matches)")
    parts.append(f"{time.monotonic() - session.started:.1f} s")
    return ", ".join(parts)


# --- The server -----------------------------------------------------------------------------


def _discard_partial(assoc) -> None:
    """A data set cut off by an abort stays in pynetdicom's temporary file (it removes the file
    only after a complete C-STORE): remove it."""
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is not None:
        partial.close()
        Path(partial.name).unlink(missing_ok=True)


class _RequestHandler(RequestHandler):
    """pynetdicom's handler, plus an end-of-association step in the association's own thread
    (its database connection is that thread's to close)."""

    def handle(self) -> None:
        assoc = self._create_association()
        session = assoc.exchange_session = _Session(address=str(self.client_address[0]))
        run, scp = assoc.run, self.server.exchange_scp

        def run_then_finish() -> None:
            try:
                run()
            finally:
                scp.finished(assoc, session)

        assoc.run = run_then_finish
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()


class DicomScp:
    """The SCP: ``start()`` listens in a background thread and returns the port; ``stop()``
    stops accepting, lets running associations finish (``grace`` seconds) and aborts the rest."""

    def __init__(self, *, ae_title: str | None = None, host: str | None = None, port: int | None = None,
                 max_associations: int | None = None, timeout: int | None = None, report=None):
        self.ae_title = ae_title or settings.EXCHANGE_SCP_AE_TITLE
        self.host = host or settings.EXCHANGE_SCP_HOST
        self.port = settings.EXCHANGE_SCP_PORT if port is None else port
        self.max_associations = max_associations or settings.EXCHANGE_SCP_MAX_ASSOCIATIONS
        self.timeout = timeout or settings.EXCHANGE_SCP_TIMEOUT
        self.report = report
        self.ae: AE | None = None
        self._server = None
        self._thread: threading.Thread | None = None

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.ae_title)
        ae.maximum_associations = self.max_associations
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.require_called_aet = True
        ae.add_supported_context(Verification)
        # Instances are stored as received: every transfer syntax pynetdicom knows is accepted.
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(PatientRootQueryRetrieveInformationModelFind)
        return ae

    def start(self) -> int:
        # Process-wide: received data sets go to a file as they arrive, never whole into memory.
        _config.STORE_RECV_CHUNKED_DATASET = True
        self.ae = self._make_ae()
        handlers = [(evt.EVT_REQUESTED, _on_requested), (evt.EVT_C_ECHO, _on_echo),
                    (evt.EVT_C_STORE, _on_store), (evt.EVT_C_FIND, _on_find)]
        server = self.ae.make_server((self.host, self.port), evt_handlers=handlers,
                                     server_class=ThreadedAssociationServer, request_handler=_RequestHandler)
        server.exchange_scp = self
        self.ae._servers.append(server)  # where AssociationServer.shutdown() expects it
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, name="dicom-scp", daemon=True)
        self._thread.start()
        return self.port

    def stop(self, grace: float = 10.0) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        deadline = time.monotonic() + grace
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        running = self.ae.active_associations
        self.ae.shutdown()  # aborts what is left
        for assoc in running:
            assoc.join(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def finished(self, assoc, session: _Session) -> None:
        """End of an association: close its ingest batch, audit its refused instances, report."""
        try:
            _discard_partial(assoc)
            if session.batch is not None:
                batch_finish(session.batch)
                if session.failed:
                    with transaction.atomic():
                        record(Event.INSTANCES_STORED, session.actor,
                               Outcome.MINOR_FAILURE if session.stored + session.duplicates else Outcome.SERIOUS_FAILURE,
                               details={**session.details(), "source": IngestSource.DIMSE, "batch": session.batch.pk,
                                        "stored": session.stored, "duplicates": session.duplicates,
                                        "rejected": session.failed})
        except Exception as exc:
            log.error("closing the association's ingest batch failed (%s)", type(exc).__name__)
        finally:
            line = summary_line(assoc, session)
            try:
                self.report(line) if self.report is not None else log.info("%s", line)
            except Exception:  # a closed stdout must not keep a database connection open
                pass
            connections.close_all()
