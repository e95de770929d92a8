"""QIDO-RS / WADO-RS client for a hospital's DICOMweb archive (PS3.18 §10.6, §10.4).

Only metadata is read here (index sync and connection tests); pixels are the retrieve proxy's job.
"""

from __future__ import annotations

import json
import socket
import ssl
from datetime import date

import requests
from pydicom.dataset import Dataset

from exchange.federation.connectors import Connector, ConnectorError, ErrorCode, TestResult, da_range
from exchange.federation.connectors.retrieve import multipart_instance_chunks, multipart_parts

STUDY_FIELDS = ["00080061", "00081030", "00100021", "00201206", "00201208", "00080090"]
SERIES_FIELDS = ["0008103E", "00180015", "00201209"]
INSTANCE_FIELDS = ["00080016", "00200013", "00280010", "00280011", "00280008"]
INSTANCE_PAGE = 1000


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__ or (exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None)


def classify(exc: requests.RequestException, url: str, timeout: float) -> ConnectorError:
    """Turn a requests failure into a message a hospital admin can act on."""
    host = requests.utils.urlparse(url).hostname or url
    if isinstance(exc, requests.exceptions.SSLError) or any(isinstance(e, ssl.SSLError) for e in _chain(exc)):
        detail = "the certificate could not be verified" if "CERTIFICATE_VERIFY_FAILED" in str(exc) else "the TLS handshake failed"
        return ConnectorError(ErrorCode.TLS, f"TLS failure talking to {host}: {detail}. Install a certificate from a trusted "
                              "CA on the archive, or (test systems only) turn off certificate verification.")
    if isinstance(exc, requests.exceptions.Timeout) or any(isinstance(e, (socket.timeout, TimeoutError)) for e in _chain(exc)):
        return ConnectorError(ErrorCode.TIMEOUT, f"Timed out: {host} did not answer within {timeout:g} s.")
    text = " ".join(str(e) for e in _chain(exc))
    if any(isinstance(e, socket.gaierror) for e in _chain(exc)) or "NameResolution" in text or "Name or service not known" in text \
            or "Failed to resolve" in text or "nodename nor servname" in text:
        return ConnectorError(ErrorCode.DNS, f"Host name {host} could not be resolved (DNS): check the URL.")
    if any(isinstance(e, ConnectionRefusedError) for e in _chain(exc)) or "Connection refused" in text:
        return ConnectorError(ErrorCode.REFUSED, f"Connection refused by {host}: nothing listens on that port, or a firewall "
                              "rejects the platform.")
    return ConnectorError(ErrorCode.PROTOCOL, f"Could not talk to {host} ({type(exc).__name__}).")


class DicomwebConnector(Connector):
    pages = True

    def __init__(self, endpoint):
        self.endpoint = endpoint
        self.qido = (endpoint.qido_url or "").rstrip("/")
        self.wado = (endpoint.wado_url or endpoint.qido_url or "").rstrip("/")
        self.timeout = float(endpoint.timeout or 30)
        self.session = requests.Session()
        # Per request, not on the session: requests lets REQUESTS_CA_BUNDLE override session.verify.
        self.verify = bool(endpoint.verify_tls)
        self.session.headers["Accept"] = "application/dicom+json"
        if endpoint.auth == "basic":
            self.session.auth = (endpoint.username, endpoint.secret)
        elif endpoint.auth == "bearer":
            self.session.headers["Authorization"] = f"Bearer {endpoint.secret}"

    # --- HTTP ------------------------------------------------------------------------------

    def _get_json(self, url: str, params: dict | None = None) -> list:
        if not url.startswith(("http://", "https://")):
            raise ConnectorError(ErrorCode.CONFIG, "The QIDO-RS URL must start with http:// or https://.")
        try:
            r = self.session.get(url, params=params, timeout=self.timeout, verify=self.verify)
        except requests.RequestException as exc:
            raise classify(exc, url, self.timeout) from None
        if r.status_code in (401, 403):
            raise ConnectorError(ErrorCode.AUTH, f"Authentication failed (HTTP {r.status_code}): check the user name and "
                                 "password or token, and that this account may query the archive.")
        if r.status_code == 204:
            return []
        if r.status_code == 404:
            raise ConnectorError(ErrorCode.NOT_DICOMWEB, "HTTP 404 Not Found: no DICOMweb service at this URL (the QIDO-RS "
                                 "root usually ends in /dicom-web or /dicomweb).")
        if r.status_code >= 400:
            raise ConnectorError(ErrorCode.HTTP_ERROR, f"The archive answered HTTP {r.status_code}.")
        ctype = r.headers.get("Content-Type", "").split(";")[0].strip().lower()
        try:
            body = r.json() if r.content else []
        except (ValueError, json.JSONDecodeError):
            body = None
        if body is None or not isinstance(body, list) or (body and not isinstance(body[0], dict)):
            what = "an HTML page" if "html" in ctype or r.text.lstrip()[:1] == "<" else f"'{ctype or 'no content type'}'"
            raise ConnectorError(ErrorCode.NOT_DICOMWEB, f"Not a DICOMweb service: the URL answered with {what}, not a "
                                 "DICOM JSON list (PS3.18 §F.2). Check the QIDO-RS root URL.")
        return body

    @staticmethod
    def _datasets(items: list) -> list[Dataset]:
        out = []
        for item in items:
            try:
                out.append(Dataset.from_json(item))
            except Exception as exc:  # malformed DICOM JSON from the archive
                raise ConnectorError(ErrorCode.PROTOCOL, f"The archive sent malformed DICOM JSON ({type(exc).__name__}).") from None
        return out

    # --- Connector -------------------------------------------------------------------------

    def test(self) -> TestResult:
        try:
            items = self._get_json(f"{self.qido}/studies", {"limit": "1"})
        except ConnectorError as exc:
            return exc.as_result()
        return TestResult(True, ErrorCode.OK, f"Connected: QIDO-RS answered ({'at least one study' if items else 'no studies yet'}).")

    def find_studies(self, date_from: date, date_to: date, *, limit: int | None = None, offset: int = 0) -> list[Dataset]:
        params = {"StudyDate": da_range(date_from, date_to), "includefield": ",".join(STUDY_FIELDS)}
        if limit is not None:
            params["limit"] = str(limit)
        if offset:
            params["offset"] = str(offset)
        return self._datasets(self._get_json(f"{self.qido}/studies", params))

    def find_patient_studies(self, patient_id: str, issuer: str | None = None, *, limit: int | None = None) -> list[Dataset]:
        # QIDO-RS SearchForStudies with PatientID= (PS3.18 §10.6.1.2, §8.3.4).
        params = {"PatientID": patient_id, "includefield": ",".join(STUDY_FIELDS)}
        if issuer:
            params["IssuerOfPatientID"] = issuer
        if limit is not None:
            params["limit"] = str(limit)
        return self._datasets(self._get_json(f"{self.qido}/studies", params))

    def holds_study(self, study_uid: str) -> bool:
        return bool(self._get_json(f"{self.qido}/studies", {"StudyInstanceUID": study_uid, "limit": "1"}))

    def find_series(self, study_uid: str) -> list[Dataset]:
        return self._datasets(self._get_json(f"{self.qido}/studies/{study_uid}/series", {"includefield": ",".join(SERIES_FIELDS)}))

    def find_instances(self, study_uid: str, series_uid: str) -> list[Dataset]:
        out: list[Dataset] = []
        while True:  # paged: a 3,000-slice series is not one answer
            page = self._datasets(self._get_json(
                f"{self.qido}/studies/{study_uid}/series/{series_uid}/instances",
                {"includefield": ",".join(INSTANCE_FIELDS), "limit": str(INSTANCE_PAGE), "offset": str(len(out))}))
            out.extend(page)
            if len(page) < INSTANCE_PAGE:
                return out

    def patient_details(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Dataset | None:
        # WADO-RS metadata of one instance (PS3.18 §10.4.1.1.2): the whole header, no pixels.
        items = self._get_json(f"{self.wado}/studies/{study_uid}/series/{series_uid}/instances/{sop_instance_uid}/metadata")
        if not items:
            return None
        try:
            return Dataset.from_json(items[0], bulk_data_uri_handler=lambda *a: b"")
        except Exception:
            return None

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_instance_uid: str, *, sop_class_uid: str = "",
                          chunk_size: int = 256 * 1024):
        """WADO-RS retrieve of one instance (PS3.18 §10.4.1.1.1), asking for the archive's own
        transfer syntax (transfer-syntax=*, §8.7.3.5.2) so the bytes are the archive's file. The
        multipart/related answer is read as it arrives (requests stream=True)."""
        url = f"{self.wado}/studies/{study_uid}/series/{series_uid}/instances/{sop_instance_uid}"
        return multipart_instance_chunks(self._retrieve(url, "instance"), chunk_size=chunk_size, timeout=self.timeout)

    retrieves_series = True

    def retrieve_series(self, study_uid: str, series_uid: str, *, sop_classes: list[str] = (),
                        chunk_size: int = 256 * 1024):
        """WADO-RS Retrieve Series (PS3.18 §10.4.1.1.1, …/studies/{study}/series/{series}) in the
        archive's own transfer syntax: one request for the whole series instead of one per
        instance (the retrieve proxy's cold path). Parts are handed on as they arrive."""
        url = f"{self.wado}/studies/{study_uid}/series/{series_uid}"
        return multipart_parts(self._retrieve(url, "series"), chunk_size=chunk_size, timeout=self.timeout)

    def _retrieve(self, url: str, what: str) -> requests.Response:
        """A streamed WADO-RS answer whose status is a success; failures as ConnectorError."""
        if not url.startswith(("http://", "https://")):
            raise ConnectorError(ErrorCode.CONFIG, "The WADO-RS URL must start with http:// or https://.")
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        try:
            r = self.session.get(url, headers={"Accept": accept}, stream=True, timeout=self.timeout, verify=self.verify)
        except requests.RequestException as exc:
            raise classify(exc, url, self.timeout) from None
        if r.status_code >= 400:
            r.close()
            if r.status_code in (401, 403):
                raise ConnectorError(ErrorCode.AUTH, f"Authentication failed (HTTP {r.status_code}): check the user name "
                                     "and password or token, and that this account may retrieve from the archive.")
            if r.status_code == 404:
                raise ConnectorError(ErrorCode.NOT_FOUND, f"The archive no longer holds this {what} (HTTP 404).")
            raise ConnectorError(ErrorCode.HTTP_ERROR, f"The archive answered the retrieve with HTTP {r.status_code}.")
        return r
