"""C-MOVE retrieve (PS3.4 C.4.2): the platform asks a hospital's archive to send an instance to
the platform's own DIMSE SCP (``manage.py dicom_scp``, exchange/federation/scp.py), which stores
it through the ingest. The move's data does not come back on this association: the archive
opens its own association to the Move Destination (our AE title) and sends C-STORE
sub-operations there (PS3.4 C.4.2.3). This module sends the request and reads its responses;
exchange/federation/proxy.py then waits for the instance to be in the index.

Every failure is a ConnectorError whose message names the status and, where the archive could
not reach us, what must be configured. None carries patient data (UIDs are not even quoted).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from django.conf import settings

from exchange.federation.connectors import ConnectorError, ErrorCode, image_identifier

WILDCARD_HOSTS = {"", "0.0.0.0", "::", "*"}


class MoveStatus(IntEnum):
    """C-MOVE response statuses (PS3.4 C.4.2.1.5; general statuses PS3.7 C.4)."""

    SUCCESS = 0x0000
    PENDING = 0xFF00
    CANCEL = 0xFE00
    WARNING_SUBOPERATIONS_FAILED = 0xB000  # sub-operations complete, one or more failures
    OUT_OF_RESOURCES_MATCHES = 0xA701  # unable to calculate the number of matches
    OUT_OF_RESOURCES_SUBOPERATIONS = 0xA702  # unable to perform sub-operations
    MOVE_DESTINATION_UNKNOWN = 0xA801
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    UNABLE_TO_PROCESS = 0xC000  # 0xCxxx


@dataclass(frozen=True)
class Destination:
    """Where an archive must send a C-MOVE: the platform's AE title and the address hospitals
    reach ``dicom_scp`` at (``host`` empty when the operator has not said)."""

    ae_title: str
    host: str
    port: int

    def describe(self) -> str:
        host = self.host or "the platform's DICOM host"
        return f"AE title '{self.ae_title}' at {host}:{self.port}"


def move_destination() -> Destination:
    host = (getattr(settings, "EXCHANGE_SCP_PUBLIC_HOST", "") or "").strip()
    if not host and settings.EXCHANGE_SCP_HOST not in WILDCARD_HOSTS:
        host = settings.EXCHANGE_SCP_HOST
    return Destination(settings.EXCHANGE_SCP_AE_TITLE, host, int(settings.EXCHANGE_SCP_PORT))


@dataclass(frozen=True)
class MoveResult:
    """The final response: its status and sub-operation counts (None when the archive left
    them out; they are optional in a final response, PS3.4 C.4.2.1.6)."""

    status: int
    completed: int | None
    failed: int | None
    warning: int | None


def not_delivered(detail: str) -> ConnectorError:
    """The archive did not get the instance to the platform's SCP."""
    return ConnectorError(ErrorCode.NOT_DELIVERED, (
        f"{detail} The archive must be configured to send to the platform ({move_destination().describe()}), "
        "and the platform's DICOM receiver (manage.py dicom_scp) must be running and reachable from the archive."))


def _count(status, keyword: str) -> int | None:
    value = status.get(keyword) if status is not None else None
    return int(value) if value is not None and value != "" else None


def _failure(code: int, failed: int | None) -> ConnectorError:
    """A final status that is neither success nor the 0xB000 warning, as a ConnectorError. An
    archive that cannot open its association to the move destination says so only by 0xA702 or
    0xCxxx, often with no sub-operation counted (Orthanc: 0xC000, 0 failed): for a one-instance
    move to us that is the likely cause, so the message says what to check."""
    if code == MoveStatus.MOVE_DESTINATION_UNKNOWN:
        return ConnectorError(ErrorCode.CONFIG, (
            f"The archive does not know the move destination '{move_destination().ae_title}' (C-MOVE status 0xA801): "
            f"register the platform as a DICOM node on the archive ({move_destination().describe()})."))
    if code == MoveStatus.OUT_OF_RESOURCES_MATCHES:
        return ConnectorError(ErrorCode.PROTOCOL, "The archive is out of resources: it could not count the matches "
                              "(C-MOVE status 0xA701); try again later.")
    if code == MoveStatus.OUT_OF_RESOURCES_SUBOPERATIONS:
        return not_delivered(f"The archive could not perform the sub-operations (C-MOVE status 0xA702, "
                             f"{failed or 0} failed): it could not send the instance to the platform.")
    if code == MoveStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS:
        return ConnectorError(ErrorCode.PROTOCOL, "The archive refused the C-MOVE request as not matching the Study "
                              "Root model (C-MOVE status 0xA900).")
    if code == MoveStatus.CANCEL:
        return ConnectorError(ErrorCode.PROTOCOL, "The archive cancelled the C-MOVE (status 0xFE00).")
    if 0xC000 <= code <= 0xCFFF:
        return not_delivered(f"The archive could not process the C-MOVE (status 0x{code:04X}, {failed or 0} failed "
                             "sub-operation(s)); most often it could not open an association to the platform.")
    return ConnectorError(ErrorCode.PROTOCOL, f"C-MOVE failed with status 0x{code:04X}.")


def c_move_instance(connector, study_uid: str, series_uid: str, sop_instance_uid: str) -> MoveResult:
    """C-MOVE of one instance at IMAGE level in the Study Root model (PS3.4 C.4.2, C.6.2.1.2)
    with Move Destination = the platform's AE title. Returns after the final response; raises
    ConnectorError for a failure, a cancel, a 0xB000 warning with failed sub-operations, a
    success that matched nothing, or an archive that stops answering."""
    return _c_move(connector, image_identifier(study_uid, series_uid, sop_instance_uid), instances=1)


def c_move_series(connector, study_uid: str, series_uid: str, *, instances: int) -> MoveResult:
    """C-MOVE of a whole series at SERIES level (PS3.4 C.4.2, C.6.2.1.2: Study and Series
    Instance UID as unique keys): one association to the archive, and the archive opens one
    back to the platform's SCP for all of the series' C-STORE sub-operations. ``instances``
    (how many the index expects) only stretches the wait for responses. A 0xB000 warning with
    some sub-operations completed is returned: the caller sees which instances arrived."""
    from pydicom.dataset import Dataset

    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = study_uid
    identifier.SeriesInstanceUID = series_uid
    return _c_move(connector, identifier, instances=instances)


def _c_move(connector, identifier, *, instances: int) -> MoveResult:
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

    connector._reach()
    ae = AE(ae_title=connector.calling)
    ae.acse_timeout = ae.network_timeout = connector.timeout
    ae.connection_timeout = connector.timeout
    # The final response comes only after every sub-operation. Archives may send a pending
    # response per sub-operation, or nothing until the end: allow for a second per instance.
    ae.dimse_timeout = connector.timeout + max(0, instances - 1)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = connector._associate(ae=ae)
    if not any(cx.abstract_syntax == StudyRootQueryRetrieveInformationModelMove for cx in assoc.accepted_contexts):
        assoc.release()
        raise ConnectorError(ErrorCode.CONFIG, "The archive does not accept Study Root C-MOVE requests from the "
                             "platform (presentation context rejected): allow it, or choose C-GET as retrieve method.")
    final = None
    try:
        for status, _identifier in assoc.send_c_move(identifier, move_destination().ae_title,
                                                     StudyRootQueryRetrieveInformationModelMove):
            if status is None or "Status" not in status:
                raise ConnectorError(ErrorCode.TIMEOUT, f"The archive stopped answering the C-MOVE (no response within "
                                     f"{connector.timeout:g} s, or the association was aborted).")
            if status.Status == MoveStatus.PENDING:
                continue
            final = status
            break
    except BaseException:
        if assoc.is_established:
            assoc.abort()
        raise
    if assoc.is_established:
        assoc.release()
    if final is None:
        raise ConnectorError(ErrorCode.PROTOCOL, "The archive ended the C-MOVE without a final response.")
    return final_result(final)


def final_result(final) -> MoveResult:
    """The C-MOVE's final response (PS3.4 C.4.2.1.5-6) as a MoveResult, or the ConnectorError it
    amounts to."""
    code = int(final.Status)
    result = MoveResult(code, _count(final, "NumberOfCompletedSuboperations"),
                        _count(final, "NumberOfFailedSuboperations"), _count(final, "NumberOfWarningSuboperations"))
    if code == MoveStatus.WARNING_SUBOPERATIONS_FAILED:
        if result.completed:  # one delivered with a warning: the proxy looks for it in the index
            return result
        raise not_delivered(f"The archive could not send the instance (C-MOVE status 0xB000, "
                            f"{result.failed or 0} failed sub-operation(s)).")
    if code != MoveStatus.SUCCESS:
        raise _failure(code, result.failed)
    if result.failed:
        raise not_delivered(f"The archive reported success but {result.failed} failed sub-operation(s).")
    if result.completed == 0 and not result.warning:
        raise ConnectorError(ErrorCode.NOT_FOUND, "The archive matched nothing for this instance (C-MOVE with no "
                             "sub-operations): it no longer holds it.")
    return result
