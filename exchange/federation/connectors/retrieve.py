"""Retrieve side of the connectors: one instance's Part 10 bytes from an archive, as they arrive.

* DICOMweb: the WADO-RS answer (PS3.18 §10.4.1.1.1, multipart/related, §8.6.1.2) is read from
  the socket in chunks with exchange/dicomweb/multipart.py's reader; the one part's body is
  handed on chunk by chunk.
* DIMSE: C-GET (PS3.4 C.4.3) of the instance; the archive sends it back as a C-STORE
  sub-operation on the same association (PS3.4 C.4.3.3), which pynetdicom writes to a file as
  the P-DATA arrive (``STORE_RECV_CHUNKED_DATASET``), preceded by File Meta Information built
  from the accepted presentation context. The file is then read out in chunks and removed.

Every failure is a ConnectorError; none carries patient data (UIDs and host names only).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator

import requests
import urllib3

from exchange.dicomweb.multipart import MultipartError, MultipartReader, parse_content_type
from exchange.federation.connectors import ConnectorError, ErrorCode, image_identifier


# --- DICOMweb -------------------------------------------------------------------------------


class _Socket:
    """File-like view of a streamed requests body: ``read(n)`` returns what has arrived (at most
    n bytes) instead of waiting for all n, so the first bytes go on at once."""

    def __init__(self, raw):
        self._raw = raw
        self._raw.decode_content = True

    def read(self, n: int) -> bytes:
        return self._raw.read1(n) if hasattr(self._raw, "read1") else self._raw.read(n)


def _dropped(exc: BaseException, timeout: float) -> ConnectorError:
    if isinstance(exc, (socket.timeout, TimeoutError, urllib3.exceptions.ReadTimeoutError, requests.Timeout)):
        return ConnectorError(ErrorCode.TIMEOUT, f"Timed out: the archive stopped sending for {timeout:g} s mid-transfer.")
    return ConnectorError(ErrorCode.PROTOCOL, "The archive closed the connection mid-transfer "
                          f"({type(exc).__name__}); nothing was kept.")


def _translated(chunks: Iterator[bytes], timeout: float) -> Iterator[bytes]:
    """Chunks of a streamed answer, with the transport's failures as ConnectorError."""
    try:
        yield from chunks
    except ConnectorError:
        raise
    except MultipartError:
        raise ConnectorError(ErrorCode.PROTOCOL, "The archive's answer ended mid-transfer (multipart body without its "
                             "closing delimiter); nothing was kept.") from None
    except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
        raise _dropped(exc, timeout) from None


def multipart_parts(response, *, chunk_size: int, timeout: float) -> Iterator[Iterator[bytes]]:
    """The application/dicom parts of a WADO-RS answer (PS3.18 §8.6.1.2, multipart/related), each
    as an iterator of its body's chunks as they arrive; a part must be read (or left) before the
    next is asked for. Ends only after the closing delimiter was read: a body cut short raises
    ConnectorError. The response is closed at the end, or when this generator is closed."""
    try:
        media, params = parse_content_type(response.headers.get("Content-Type", ""))
        stream = _Socket(response.raw)
        if response.status_code == 204:
            raise ConnectorError(ErrorCode.NOT_FOUND, "The archive answered the retrieve with no content (HTTP 204).")
        if media == "application/dicom":  # a bare instance instead of a multipart answer: take it
            yield _translated(iter(lambda: stream.read(chunk_size), b""), timeout)
            return
        if media != "multipart/related":
            raise ConnectorError(ErrorCode.PROTOCOL, f"The archive answered the retrieve with '{media or 'no content type'}', "
                                 "not multipart/related (PS3.18 §8.6.1.2).")
        try:
            reader = MultipartReader(stream, params.get("boundary", ""), chunk_size=chunk_size)
        except MultipartError:
            raise ConnectorError(ErrorCode.PROTOCOL, "The archive's multipart answer has no valid boundary "
                                 "(PS3.18 §8.6.1.2).") from None
        # Reading the body (the parts' headers here, their chunks by the caller) is what can fail.
        for part in _translated(reader.parts(), timeout):
            part_type, _ = parse_content_type(part.content_type)
            if part_type not in ("", "application/dicom"):
                raise ConnectorError(ErrorCode.PROTOCOL, f"The archive sent a '{part_type}' part, not application/dicom.")
            yield _translated(part.chunks(), timeout)
    finally:
        response.close()


def multipart_instance_chunks(response, *, chunk_size: int, timeout: float) -> Iterator[bytes]:
    """The body of the one application/dicom part of a WADO-RS instance answer, as it arrives.
    Ends only after the closing delimiter was read: a body cut short raises ConnectorError."""
    parts = multipart_parts(response, chunk_size=chunk_size, timeout=timeout)
    try:
        part = next(parts, None)
        if part is None:
            raise ConnectorError(ErrorCode.NOT_FOUND, "The archive answered the retrieve with no instance.")
        yield from part
        if next(parts, None) is not None:
            raise ConnectorError(ErrorCode.PROTOCOL, "The archive sent more than one instance for one SOP Instance UID.")
    finally:
        parts.close()


# --- DIMSE ----------------------------------------------------------------------------------

# C-GET statuses (PS3.4 C.4.3.1.4)
GET_PENDING = {0xFF00}
GET_SUCCESS = 0x0000
GET_WARNING = 0xB000  # sub-operations complete, one or more failures or warnings
GET_CANCEL = 0xFE00


def retrieve_syntaxes() -> list[str]:
    """Transfer syntaxes offered for the storage sub-operation, one presentation context each, so
    the archive can send what it holds instead of transcoding (PS3.4 C.4.3.3, PS3.7 §D.3.3.5)."""
    from pydicom import uid

    return [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian,
            uid.ExplicitVRBigEndian, uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless,
            uid.JPEGLosslessSV1, uid.JPEGLSLossless, uid.JPEGLSNearLossless, uid.JPEG2000Lossless, uid.JPEG2000,
            uid.RLELossless]


# Used when the index has no SOP Class UID for the instance (it normally has, from C-FIND).
FALLBACK_SOP_CLASSES = [
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
]


def _file_chunks(path: str, chunk_size: int) -> Iterator[bytes]:
    try:
        with open(path, "rb") as fp:
            while chunk := fp.read(chunk_size):
                yield chunk
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _discard_partial(assoc) -> None:
    """pynetdicom leaves the temporary file of a C-STORE cut off by an abort: remove it."""
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is not None:
        try:
            partial.close()
            os.unlink(partial.name)
        except OSError:
            pass


def _c_get(connector, query, classes: list[str], accept, spool_dir: str | None, final: list) -> Iterator[str]:
    """C-GET (PS3.4 C.4.3) in the Study Root model, the platform taking the SCP role of the
    storage SOP classes (PS3.7 §D.3.3.4 role selection). Yields the path of each instance the
    archive sends (a temporary file; the caller removes it) as soon as its C-STORE sub-operation
    arrived, i.e. between the archive's responses; ``accept(sop_instance_uid)`` refuses the
    others (status 0xA900). ``final`` receives the final status. Files not handed out are
    removed, also when the caller stops early (the association is then aborted)."""
    from pynetdicom import AE, _config, build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

    # Receive the data set straight into a file as it arrives (never whole in memory). Set here,
    # not at import: only processes that retrieve over DIMSE switch pynetdicom to this mode.
    _config.STORE_RECV_CHUNKED_DATASET = True
    connector._reach()
    ae = AE(ae_title=connector.calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = connector.timeout
    ae.connection_timeout = connector.timeout
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for sop_class in classes or FALLBACK_SOP_CLASSES:
        for syntax in retrieve_syntaxes():
            if len(ae.requested_contexts) < 128:  # PS3.8 §9.3.2.2: at most 128 presentation contexts
                ae.add_requested_context(sop_class, [syntax])
        roles.append(build_role(sop_class, scp_role=True))

    arrived: list[str] = []
    spool = spool_dir or tempfile.gettempdir()

    def on_store(event):  # runs inside send_c_get's iteration, in this thread
        request = event.request
        path = event.dataset_path
        partial = getattr(request, "_dataset_file", None)
        if partial is not None:
            partial.close()
        try:
            if not accept(str(request.AffectedSOPInstanceUID)):
                return 0xA900  # Data Set does not match SOP Class: not what was asked for
            fd, target = tempfile.mkstemp(dir=spool, suffix=".get")
            os.close(fd)
            shutil.move(str(path), target)
            arrived.append(target)
            return 0x0000
        finally:
            if os.path.exists(path):  # refused, or the move failed (disk full): leave nothing behind
                os.unlink(path)

    assoc = connector._associate(ae=ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        for status, _identifier in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
            if status is None or "Status" not in status:
                raise ConnectorError(ErrorCode.TIMEOUT, "The archive stopped answering the C-GET (timeout or abort); "
                                     "nothing more was kept.")
            last = status.Status
            while arrived:
                yield arrived.pop(0)
            if last in GET_PENDING:
                continue
            if last in (GET_SUCCESS, GET_WARNING, GET_CANCEL):
                final.append(last)
                break
            raise ConnectorError(ErrorCode.PROTOCOL, f"C-GET failed with status 0x{last:04X}.")
        while arrived:
            yield arrived.pop(0)
    except BaseException:
        _discard_partial(assoc)
        if assoc.is_established:
            assoc.abort()
        raise
    finally:
        for path in arrived:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    if assoc.is_established:
        assoc.release()


def c_get_instance(connector, study_uid: str, series_uid: str, sop_instance_uid: str, *, sop_class_uid: str = "",
                   chunk_size: int = 256 * 1024, spool_dir: str | None = None) -> Iterator[bytes]:
    """C-GET of one instance at IMAGE level (PS3.4 C.4.3, C.6.2.1.2). Returns the received Part 10
    file's chunks; raises ConnectorError before that if nothing (valid) arrived."""
    got: set[str] = set()

    def accept(uid: str) -> bool:
        if uid != sop_instance_uid or got:
            return False
        got.add(uid)
        return True

    final: list = []
    paths: list[str] = []
    try:
        for path in _c_get(connector, image_identifier(study_uid, series_uid, sop_instance_uid),
                           [sop_class_uid] if sop_class_uid else [], accept, spool_dir, final):
            paths.append(path)
    except BaseException:
        for path in paths:  # arrived, but the C-GET then failed: nothing is kept
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        raise
    if not paths:
        raise ConnectorError(ErrorCode.NOT_FOUND, "The archive sent nothing for this instance "
                             f"(C-GET status 0x{(final[0] if final else 0):04X}): it no longer holds it, or cannot "
                             "send it in any offered transfer syntax.")
    return _file_chunks(paths[0], chunk_size)


def c_get_series(connector, study_uid: str, series_uid: str, *, sop_classes: list[str], chunk_size: int = 256 * 1024,
                 spool_dir: str | None = None) -> Iterator[Iterator[bytes]]:
    """C-GET of a whole series at SERIES level (PS3.4 C.4.3, C.6.2.1.2): one association, the
    archive's C-STORE sub-operations on it. Each instance is handed on (its Part 10 file's
    chunks) as soon as it arrived; read it before asking for the next."""
    from pydicom.dataset import Dataset

    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = study_uid
    identifier.SeriesInstanceUID = series_uid
    seen: set[str] = set()

    def accept(uid: str) -> bool:  # each instance once
        if uid in seen:
            return False
        seen.add(uid)
        return True

    given: list[str] = []
    paths = _c_get(connector, identifier, sop_classes, accept, spool_dir, [])
    try:
        for path in paths:
            given.append(path)
            yield _file_chunks(path, chunk_size)
    finally:
        paths.close()
        for path in given:  # a part the caller left unread
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
