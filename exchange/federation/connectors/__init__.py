"""Connectors to hospital archives: one per protocol, one small interface.

``connector_for(endpoint)`` gives a DICOMweb or DIMSE connector. Every failure to reach or
understand an archive is a ``ConnectorError`` whose ``code`` says what kind it was (so a person
gets a message they can act on, and a task knows whether retrying can help)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date

from django.db import models
from pydicom.dataset import Dataset


class ErrorCode(models.TextChoices):
    OK = "ok", "OK"
    DNS = "dns", "Host name not found"
    REFUSED = "refused", "Connection refused"
    TIMEOUT = "timeout", "Timed out"
    TLS = "tls", "TLS failure"
    AUTH = "auth", "Authentication failed"
    WRONG_AE = "wrong_ae", "AE title not recognised"
    REJECTED = "rejected", "Association rejected"
    NOT_DICOMWEB = "not_dicomweb", "Not a DICOMweb service"
    HTTP_ERROR = "http_error", "HTTP error"
    PROTOCOL = "protocol", "Protocol error"
    CONFIG = "config", "Endpoint not configured"
    NOT_FOUND = "not_found", "Not held by the archive"
    # C-MOVE (PS3.4 C.4.2): the archive did not get the instance to the platform's own SCP.
    NOT_DELIVERED = "not_delivered", "Not delivered to the platform"


# Failures that may pass by themselves: a task retries these with backoff.
TRANSIENT = {ErrorCode.DNS, ErrorCode.REFUSED, ErrorCode.TIMEOUT, ErrorCode.HTTP_ERROR, ErrorCode.PROTOCOL,
             ErrorCode.NOT_DELIVERED}  # dicom_scp being restarted, a network hiccup between archive and platform


@dataclass(frozen=True)
class TestResult:
    ok: bool
    code: str
    message: str

    __test__ = False  # not a pytest test class


class ConnectorError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT

    def as_result(self) -> TestResult:
        return TestResult(False, self.code, self.message)


class Connector:
    """Query side of an archive. Datasets are pydicom Datasets (QIDO JSON is converted)."""

    def test(self) -> TestResult:  # pragma: no cover - interface
        raise NotImplementedError

    def find_studies(self, date_from: date, date_to: date, *, limit: int | None = None, offset: int = 0) -> list[Dataset]:
        """Studies whose StudyDate is in [date_from, date_to]. With ``limit``: at most that many."""
        raise NotImplementedError  # pragma: no cover

    def find_series(self, study_uid: str) -> list[Dataset]:
        raise NotImplementedError  # pragma: no cover

    def find_instances(self, study_uid: str, series_uid: str) -> list[Dataset]:
        raise NotImplementedError  # pragma: no cover

    def find_patient_studies(self, patient_id: str, issuer: str | None = None, *, limit: int | None = None) -> list[Dataset]:
        """One patient's studies at this archive: Study Root, STUDY level, single value matching on
        PatientID (and IssuerOfPatientID when given), PS3.4 C.6.2.1 / C.2.2.2.1 (the federated
        search). With ``limit``: about that many at most (C-FIND may return one more)."""
        raise NotImplementedError  # pragma: no cover

    def holds_study(self, study_uid: str) -> bool:
        """Whether the archive still holds this study: a STUDY-level query on its UID (PS3.4
        C.6.2.1, single value matching). The sync asks before it withdraws an index entry."""
        raise NotImplementedError  # pragma: no cover

    def patient_details(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Dataset | None:
        """Patient module of one instance when the study-level answer lacks it (IssuerOfPatientID,
        OtherPatientIDsSequence); None if the protocol has no cheap way to get it."""
        return None

    # Paging: can this connector page with limit/offset (QIDO-RS), or does it return all (C-FIND)?
    pages = False

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_instance_uid: str, *, sop_class_uid: str = "",
                          chunk_size: int = 256 * 1024) -> Iterator[bytes]:
        """One instance's DICOM Part 10 file in the archive's own transfer syntax, as an iterator of
        chunks (the retrieve proxy, exchange/federation/proxy.py). Connection, authentication and
        "not held" failures raise ConnectorError from this call, before any byte; a failure later
        (the archive drops mid-transfer) raises ConnectorError from the iterator. Closing the
        iterator early releases the connection."""
        raise NotImplementedError  # pragma: no cover

    # Can the connector bring a whole series in one request (retrieve_series)?
    retrieves_series = False

    def retrieve_series(self, study_uid: str, series_uid: str, *, sop_classes: list[str] = (),
                        chunk_size: int = 256 * 1024) -> Iterator[Iterator[bytes]]:
        """Every instance of one series, one Part 10 file after the other in the order the archive
        sends them, each as an iterator of chunks to read before the next is asked for.
        ``sop_classes``: the storage SOP classes the index knows in the series (C-GET offers
        them). Failures as in retrieve_instance."""
        raise NotImplementedError  # pragma: no cover


def image_identifier(study_uid: str, series_uid: str, sop_instance_uid: str) -> Dataset:
    """The identifier of a C-GET/C-MOVE for one instance (Study Root, IMAGE level; PS3.4 C.4.2.1.4)."""
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = series_uid
    query.SOPInstanceUID = sop_instance_uid
    return query


def da_range(date_from: date, date_to: date) -> str:
    """A DICOM date range matching value (PS3.4 C.2.2.2.5.1)."""
    return f"{date_from:%Y%m%d}-{date_to:%Y%m%d}"


def connector_for(endpoint) -> Connector:
    from hospitals.models import EndpointKind

    if endpoint.kind == EndpointKind.DICOMWEB:
        from exchange.federation.connectors.dicomweb import DicomwebConnector

        return DicomwebConnector(endpoint)
    if endpoint.kind == EndpointKind.DIMSE:
        from exchange.federation.connectors.dimse import DimseConnector

        return DimseConnector(endpoint)
    raise ConnectorError(ErrorCode.CONFIG, "a push endpoint is not queried: the hospital sends its studies to the platform")
