"""DIMSE client for a hospital's PACS: C-ECHO (PS3.7 §9.1.5) and C-FIND in the Study Root
information model (PS3.4 C.4.1, C.6.2) through pynetdicom.

pynetdicom logs the query and answer identifiers by default (patient names and ids): turned off
here, for the whole process, before any association is made.
"""

from __future__ import annotations

import socket
import time
from datetime import date

from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from exchange.federation.connectors import Connector, ConnectorError, ErrorCode, TestResult, da_range

_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

# A_ASSOCIATE-RJ (PS3.8 §9.3.4): result source 1 = service user; its reasons.
_USER_REJECT = {
    1: "no reason given",
    2: "application context name not supported",
    3: "calling AE title not recognised: the archive must be configured to accept the platform's AE title",
    7: "called AE title not recognised: check the archive's AE title",
}
# C-FIND statuses (PS3.4 C.4.1.1.4)
PENDING = {0xFF00, 0xFF01}
SUCCESS = 0x0000
CANCEL = 0xFE00

STUDY_KEYS = {
    "SpecificCharacterSet": "", "StudyInstanceUID": "", "StudyDate": "", "StudyTime": "", "AccessionNumber": "",
    "StudyID": "", "StudyDescription": "", "ReferringPhysicianName": "", "ModalitiesInStudy": "", "PatientName": "",
    "PatientID": "", "IssuerOfPatientID": "", "PatientBirthDate": "", "PatientSex": "",
    "NumberOfStudyRelatedSeries": None, "NumberOfStudyRelatedInstances": None,
}
SERIES_KEYS = {"SpecificCharacterSet": "", "SeriesInstanceUID": "", "Modality": "", "SeriesNumber": None,
               "SeriesDescription": "", "BodyPartExamined": "", "NumberOfSeriesRelatedInstances": None}
INSTANCE_KEYS = {"SpecificCharacterSet": "", "SOPInstanceUID": "", "SOPClassUID": "", "InstanceNumber": None,
                 "Rows": None, "Columns": None, "NumberOfFrames": None}


class DimseConnector(Connector):
    pages = False

    def __init__(self, endpoint):
        self.endpoint = endpoint
        self.host = (endpoint.host or "").strip()
        self.port = int(endpoint.port or 104)
        self.called = (endpoint.remote_ae_title or "").strip()
        self.calling = (endpoint.calling_ae_title or endpoint.hospital.ae_title or "EXCHANGE").strip()
        self.timeout = float(endpoint.timeout or 30)

    def _ae(self) -> AE:
        ae = AE(ae_title=self.calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = self.timeout
        ae.add_requested_context(Verification)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        return ae

    def _reach(self) -> None:
        """Resolve and connect once with a plain socket: pynetdicom reports every such failure the
        same way, a person needs to know which it was."""
        if not self.host or not self.called:
            raise ConnectorError(ErrorCode.CONFIG, "Host, port and the archive's AE title are required.")
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            raise ConnectorError(ErrorCode.DNS, f"Host name {self.host} could not be resolved (DNS).") from None
        family, kind, proto, _, address = infos[0]
        try:
            with socket.socket(family, kind, proto) as s:
                s.settimeout(self.timeout)
                s.connect(address)
        except ConnectionRefusedError:
            raise ConnectorError(ErrorCode.REFUSED, f"Connection refused by {self.host}:{self.port}: nothing listens on "
                                 "that port, or a firewall rejects the platform.") from None
        except (socket.timeout, TimeoutError):
            raise ConnectorError(ErrorCode.TIMEOUT, f"Timed out connecting to {self.host}:{self.port} "
                                 f"(no answer within {self.timeout:g} s).") from None
        except OSError as exc:
            raise ConnectorError(ErrorCode.REFUSED, f"Cannot connect to {self.host}:{self.port} ({exc.strerror or type(exc).__name__}).") from None

    def _associate(self, retry_abort: bool = True, ae: AE | None = None, **kwargs):
        self._reach()
        started = time.monotonic()
        assoc = (ae or self._ae()).associate(self.host, self.port, ae_title=self.called, **kwargs)
        if assoc.is_established:
            return assoc
        if assoc.is_aborted and retry_abort and time.monotonic() - started < self.timeout * 0.5:
            # A peer that rejects and closes at once can lose the race with its own A-ASSOCIATE-RJ
            # (seen with Orthanc under load): the rejection then looks like an abort. Ask once more.
            return self._associate(retry_abort=False, ae=ae, **kwargs)
        if assoc.is_rejected:
            rj = assoc.acceptor.primitive
            source, reason = getattr(rj, "result_source", None), getattr(rj, "diagnostic", None)
            if source == 1 and reason in (3, 7):
                raise ConnectorError(ErrorCode.WRONG_AE, f"Association rejected: {_USER_REJECT[reason]} "
                                     f"(called '{self.called}', calling '{self.calling}').")
            why = _USER_REJECT.get(reason, f"reason {reason}") if source == 1 else f"source {source}, reason {reason}"
            raise ConnectorError(ErrorCode.REJECTED, f"Association rejected by the archive ({why}).")
        if time.monotonic() - started >= self.timeout * 0.9:
            raise ConnectorError(ErrorCode.TIMEOUT, f"Timed out: {self.host}:{self.port} accepted the connection but did "
                                 f"not answer the association request within {self.timeout:g} s (is it a DICOM port?).")
        raise ConnectorError(ErrorCode.PROTOCOL, f"{self.host}:{self.port} aborted the association (is it a DICOM port?).")

    # --- Connector -------------------------------------------------------------------------

    def test(self) -> TestResult:
        try:
            assoc = self._associate()
        except ConnectorError as exc:
            return exc.as_result()
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        if status is None or "Status" not in status:
            return TestResult(False, ErrorCode.TIMEOUT, "The archive accepted the association but did not answer C-ECHO.")
        if status.Status != SUCCESS:
            return TestResult(False, ErrorCode.PROTOCOL, f"C-ECHO failed with status 0x{status.Status:04X}.")
        return TestResult(True, ErrorCode.OK, f"Connected: C-ECHO to {self.called}@{self.host}:{self.port} succeeded.")

    def _find(self, level: str, keys: dict, match: dict, limit: int | None = None) -> list[Dataset]:
        query = Dataset()
        query.QueryRetrieveLevel = level
        for keyword, value in {**keys, **match}.items():
            setattr(query, keyword, value)
        if level == "STUDY":
            query.OtherPatientIDsSequence = []
        assoc = self._associate()
        out: list[Dataset] = []
        try:
            for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                if status is None or "Status" not in status:
                    raise ConnectorError(ErrorCode.TIMEOUT, "The archive stopped answering the C-FIND (timeout or abort).")
                code = status.Status
                if code in PENDING:
                    if identifier is not None:
                        out.append(identifier)
                    if limit is not None and len(out) > limit:
                        # More than the caller can take: stop here, the caller narrows the query.
                        assoc.abort()
                        return out
                elif code in (SUCCESS, CANCEL):
                    break
                else:
                    raise ConnectorError(ErrorCode.PROTOCOL, f"C-FIND failed with status 0x{code:04X}.")
        finally:
            if assoc.is_established:
                assoc.release()
        return out

    def find_studies(self, date_from: date, date_to: date, *, limit: int | None = None, offset: int = 0) -> list[Dataset]:
        found = self._find("STUDY", STUDY_KEYS, {"StudyDate": da_range(date_from, date_to)}, limit)
        return found[offset:]

    def find_patient_studies(self, patient_id: str, issuer: str | None = None, *, limit: int | None = None) -> list[Dataset]:
        # C-FIND, Study Root, STUDY level, PatientID single value matching (PS3.4 C.6.2.1, C.2.2.2.1).
        match = {"PatientID": patient_id}
        if issuer:
            match["IssuerOfPatientID"] = issuer
        return self._find("STUDY", STUDY_KEYS, match, limit)

    def holds_study(self, study_uid: str) -> bool:
        return bool(self._find("STUDY", {}, {"StudyInstanceUID": study_uid}, limit=0))

    def find_series(self, study_uid: str) -> list[Dataset]:
        return self._find("SERIES", SERIES_KEYS, {"StudyInstanceUID": study_uid})

    def find_instances(self, study_uid: str, series_uid: str) -> list[Dataset]:
        return self._find("IMAGE", INSTANCE_KEYS, {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid})

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_instance_uid: str, *, sop_class_uid: str = "",
                          chunk_size: int = 256 * 1024):
        """C-GET of one instance (PS3.4 C.4.3): see exchange/federation/connectors/retrieve.py."""
        from exchange.federation.connectors.retrieve import c_get_instance

        return c_get_instance(self, study_uid, series_uid, sop_instance_uid, sop_class_uid=sop_class_uid,
                              chunk_size=chunk_size)

    retrieves_series = True

    def retrieve_series(self, study_uid: str, series_uid: str, *, sop_classes: list[str] = (),
                        chunk_size: int = 256 * 1024):
        """C-GET of a whole series (PS3.4 C.4.3, SERIES level): see retrieve.py."""
        from exchange.federation.connectors.retrieve import c_get_series

        return c_get_series(self, study_uid, series_uid, sop_classes=list(sop_classes), chunk_size=chunk_size)

    def move_instance(self, study_uid: str, series_uid: str, sop_instance_uid: str):
        """C-MOVE of one instance to the platform's own SCP (PS3.4 C.4.2): see
        exchange/federation/connectors/move.py. Returns the final response (MoveResult)."""
        from exchange.federation.connectors.move import c_move_instance

        return c_move_instance(self, study_uid, series_uid, sop_instance_uid)

    def move_series(self, study_uid: str, series_uid: str, *, instances: int):
        """C-MOVE of a whole series to the platform's own SCP (SERIES level): see move.py."""
        from exchange.federation.connectors.move import c_move_series

        return c_move_series(self, study_uid, series_uid, instances=instances)
