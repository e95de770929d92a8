"""Forward audit events to a syslog collector (IHE ATNA ITI-20 Record Audit Event).

Each event goes as one RFC 5424 message whose body is its DICOM audit message XML (PS3.15 A.5.1,
audit.exports), over TCP with octet-counting framing (RFC 6587 3.4.1: "<length> <message>"), in
TLS when settings.AUDIT_SYSLOG_TLS (RFC 5425, which keeps the same framing), the server checked
against settings.AUDIT_SYSLOG_CA_FILE (or the system's CAs).

The database trail is the record; forwarding is a copy. It happens after the action's transaction
commits (a rolled-back action sends nothing), and a collector that is down or slow costs each
event at most TIMEOUT seconds and a warning in the log, never the action itself.
"""

import logging
import os
import socket
import ssl
import threading
from datetime import UTC

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from audit.exports import audit_message_xml
from audit.models import Outcome

logger = logging.getLogger(__name__)

TIMEOUT = 2.0
# ITI-20: facility 10 (security/authorization), severity 5 (notice); failures 4 (warning).
FACILITY = 10
SEVERITY_NOTICE, SEVERITY_WARNING = 5, 4
MSGID = "IHE+RFC-3881"
APP_NAME = "exchange"


def parse_address(address: str, tls: bool) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; without a port, 6514 (RFC 5425) with TLS, else 514."""
    host, port = address, ""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest.removeprefix(":")
    elif address.count(":") == 1:
        host, port = address.split(":")
    try:
        return host, int(port) if port else (6514 if tls else 514)
    except ValueError:
        raise ImproperlyConfigured(f"AUDIT_SYSLOG_ADDRESS: bad port in {address!r}") from None


def syslog_message(event, hostname: str | None = None) -> bytes:
    """RFC 5424: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`` (no structured data)."""
    severity = SEVERITY_NOTICE if event.outcome == Outcome.SUCCESS else SEVERITY_WARNING
    timestamp = event.timestamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    hostname = (hostname or socket.gethostname() or "-")[:255]
    header = f"<{FACILITY * 8 + severity}>1 {timestamp} {hostname} {APP_NAME} {os.getpid()} {MSGID} - "
    return header.encode("ascii", "replace") + audit_message_xml(event)


def frame(message: bytes) -> bytes:
    """RFC 6587 octet counting: the message's length in bytes, a space, the message."""
    return str(len(message)).encode("ascii") + b" " + message


class Forwarder:
    """One connection to the collector, shared by the process's threads, reopened when it fails."""

    def __init__(self, address: str, tls: bool, ca_file: str = "", timeout: float = TIMEOUT):
        self.host, self.port = parse_address(address, tls)
        self.tls, self.ca_file, self.timeout = tls, ca_file, timeout
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        if self.tls:
            context = ssl.create_default_context(cafile=self.ca_file or None)
            sock = context.wrap_socket(sock, server_hostname=self.host)
        return sock

    def send(self, data: bytes) -> None:
        with self._lock:
            for attempt in (1, 2):
                fresh = self._sock is None
                try:
                    if fresh:
                        self._sock = self._connect()
                    self._sock.sendall(data)
                    return
                except OSError:
                    self.close_locked()
                    # A kept connection may have been closed by the collector while idle: reconnect
                    # once. A new connection that fails means the collector is down: give up now.
                    if fresh or attempt == 2:
                        raise

    def close_locked(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def close(self) -> None:
        with self._lock:
            self.close_locked()


_forwarder: Forwarder | None = None
_forwarder_key: tuple | None = None
_forwarder_lock = threading.Lock()


def forwarder() -> Forwarder | None:
    """The process's forwarder for the configured collector; None when none is configured."""
    global _forwarder, _forwarder_key
    address = settings.AUDIT_SYSLOG_ADDRESS
    if not address:
        return None
    key = (address, bool(settings.AUDIT_SYSLOG_TLS), settings.AUDIT_SYSLOG_CA_FILE)
    with _forwarder_lock:
        if _forwarder_key != key:
            if _forwarder is not None:
                _forwarder.close()
            _forwarder, _forwarder_key = Forwarder(*key), key
        return _forwarder


def send(event) -> bool:
    """Send one event now. Returns whether it was sent; failures are logged, not raised."""
    target = forwarder()
    if target is None:
        return False
    try:
        target.send(frame(syslog_message(event)))
    except (OSError, ssl.SSLError) as exc:
        # The seq only: never patient identifiers in the application log.
        logger.warning("audit syslog: event seq %s not forwarded to %s:%s: %s", event.seq, target.host,
                       target.port, exc.__class__.__name__)
        return False
    return True


def forward(event) -> None:
    """Queue ``event`` for the collector once the current transaction commits (call from record())."""
    if not settings.AUDIT_SYSLOG_ADDRESS:
        return
    transaction.on_commit(lambda: send(event))
