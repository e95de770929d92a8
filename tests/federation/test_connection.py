"""Connection tests give a distinct, clear message for each way an archive can fail, against
real servers: Orthanc (wrong password, wrong AE title), a closed port, a socket that never
answers, a TLS server with a self-signed certificate, an HTTP server that answers HTML."""

from __future__ import annotations

import datetime
import http.server
import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.ingest import free_port
from exchange.federation.connectors import ErrorCode
from hospitals.models import ArchiveEndpoint
from hospitals.services import endpoint_create, endpoint_test

pytestmark = pytest.mark.django_db


@pytest.fixture
def hospital(hospital_a):
    return hospital_a


def dicomweb(hospital, url, **kw):
    return endpoint_create(hospital=hospital, kind="dicomweb", name="PACS", qido_url=url, timeout=kw.pop("timeout", 2), **kw)


def dimse(hospital, port, ae="PPH_PACS", host="127.0.0.1", timeout=2):
    return endpoint_create(hospital=hospital, kind="dimse", name=f"PACS DIMSE {port}", remote_ae_title=ae, host=host, port=port,
                           timeout=timeout)


@pytest.fixture
def silent_socket():
    """Accepts TCP connections (kernel backlog) and never says a word."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


class _Html(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"<!doctype html><html><body>Welcome to the hospital intranet</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def html_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Html)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def tls_server(tmp_path):
    """HTTPS with a self-signed certificate (not trusted by any CA bundle)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Html)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.handle_error = lambda *a: None  # the client hangs up mid-handshake, on purpose
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_dicomweb_ok_and_wrong_password(archives, hospital):
    server = archives["PPH"]
    good = dicomweb(hospital, server.dicomweb, auth="basic", username="platform", secret=server.password)
    result = endpoint_test(good)
    assert (result.ok, result.code) == (True, ErrorCode.OK)
    assert ArchiveEndpoint.objects.get(pk=good.pk).last_test_ok is True
    bad = endpoint_create(hospital=hospital, kind="dicomweb", name="PACS wrong", qido_url=server.dicomweb, auth="basic",
                          username="platform", secret="wrong-password")
    result = endpoint_test(bad)
    assert (result.ok, result.code) == (False, ErrorCode.AUTH)
    assert "Authentication failed (HTTP 401)" in result.message
    stored = ArchiveEndpoint.objects.get(pk=bad.pk)
    assert (stored.last_test_ok, stored.last_test_result, stored.status) == (False, result.message, "draft")


def test_dicomweb_connection_refused(hospital):
    result = endpoint_test(dicomweb(hospital, f"http://127.0.0.1:{free_port()}/dicom-web"))
    assert (result.ok, result.code) == (False, ErrorCode.REFUSED)
    assert result.message.startswith("Connection refused")


def test_dicomweb_timeout(hospital, silent_socket):
    result = endpoint_test(dicomweb(hospital, f"http://127.0.0.1:{silent_socket}/dicom-web", timeout=1))
    assert (result.ok, result.code) == (False, ErrorCode.TIMEOUT)
    assert "did not answer within 1 s" in result.message


def test_dicomweb_tls_failure(hospital, tls_server):
    result = endpoint_test(dicomweb(hospital, tls_server + "/dicom-web"))
    assert (result.ok, result.code) == (False, ErrorCode.TLS)
    assert "certificate could not be verified" in result.message


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_dicomweb_tls_verification_can_be_turned_off_for_test_systems(hospital, tls_server):
    # The server answers HTML: the TLS step passes, the DICOMweb check then fails.
    result = endpoint_test(dicomweb(hospital, tls_server + "/dicom-web", verify_tls=False))
    assert result.code == ErrorCode.NOT_DICOMWEB


def test_dicomweb_html_is_not_dicomweb(hospital, html_server):
    result = endpoint_test(dicomweb(hospital, html_server + "/dicom-web"))
    assert (result.ok, result.code) == (False, ErrorCode.NOT_DICOMWEB)
    assert "an HTML page" in result.message


def test_dicomweb_orthanc_wrong_root_is_not_dicomweb(archives, hospital):
    result = endpoint_test(dicomweb(hospital, archives["CITY1"].url + "/not-dicom-web"))
    assert (result.ok, result.code) == (False, ErrorCode.NOT_DICOMWEB)


def test_dns_failure(hospital):
    result = endpoint_test(dicomweb(hospital, "http://pacs.no-such-hospital.invalid/dicom-web"))
    assert (result.ok, result.code) == (False, ErrorCode.DNS)
    result = endpoint_test(dimse(hospital, 104, host="pacs.no-such-hospital.invalid"))
    assert (result.ok, result.code) == (False, ErrorCode.DNS)


def test_dimse_echo_ok_and_wrong_ae_title(archives, hospital):
    server = archives["CNTY"]
    result = endpoint_test(dimse(hospital, server.dicom_port, ae=server.aet))
    assert (result.ok, result.code) == (True, ErrorCode.OK)
    assert "C-ECHO" in result.message
    wrong = endpoint_create(hospital=hospital, kind="dimse", name="wrong AE", remote_ae_title="NOT_THIS_AE",
                            host="127.0.0.1", port=server.dicom_port, timeout=5)
    result = endpoint_test(wrong)
    assert (result.ok, result.code) == (False, ErrorCode.WRONG_AE)
    assert "called AE title not recognised" in result.message


def test_dimse_refused_and_timeout(hospital, silent_socket):
    result = endpoint_test(dimse(hospital, free_port()))
    assert (result.ok, result.code) == (False, ErrorCode.REFUSED)
    result = endpoint_test(dimse(hospital, silent_socket, timeout=1))
    assert (result.ok, result.code) == (False, ErrorCode.TIMEOUT)
    assert "did not answer the association request" in result.message


def test_endpoint_validation(hospital):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        endpoint_create(hospital=hospital, kind="dicomweb", name="x", qido_url="")
    with pytest.raises(ValidationError):
        endpoint_create(hospital=hospital, kind="dicomweb", name="y", qido_url="http://h/dw", auth="basic", username="u")
    with pytest.raises(ValidationError):
        endpoint_create(hospital=hospital, kind="dimse", name="z", host="h", port=104)
