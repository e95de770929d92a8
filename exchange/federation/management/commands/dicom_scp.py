"""``manage.py dicom_scp``: the platform's DIMSE SCP in the foreground (exchange/federation/scp.py)."""

import signal
import tempfile
import threading
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from exchange.federation.scp import DicomScp


class Command(BaseCommand):
    help = ("Run the platform's DIMSE SCP (C-ECHO, C-STORE, C-FIND) in the foreground until SIGTERM or Ctrl-C; "
            "prints one line per association (AE titles, address, counts; never patient data).")

    def add_arguments(self, parser):
        parser.add_argument("--host", help=f"address to listen on (default EXCHANGE_SCP_HOST, {settings.EXCHANGE_SCP_HOST})")
        parser.add_argument("--port", type=int, help=f"port (default EXCHANGE_SCP_PORT, {settings.EXCHANGE_SCP_PORT})")
        parser.add_argument("--ae-title", help=f"the platform's AE title (default EXCHANGE_SCP_AE_TITLE, "
                                               f"{settings.EXCHANGE_SCP_AE_TITLE})")
        parser.add_argument("--max-associations", type=int, help="simultaneous associations "
                                                                 "(default EXCHANGE_SCP_MAX_ASSOCIATIONS)")

    def handle(self, *args, host=None, port=None, ae_title=None, max_associations=None, **options):
        # pynetdicom writes each received data set to a temporary file: keep those on the
        # storage volume, not in a /tmp that may be memory-backed.
        spool_dir = Path(settings.EXCHANGE_STORAGE_DIR) / "tmp"
        spool_dir.mkdir(parents=True, exist_ok=True)
        previous_tempdir, tempfile.tempdir = tempfile.tempdir, str(spool_dir)
        stop = threading.Event()
        scp = DicomScp(ae_title=ae_title, host=host, port=port, max_associations=max_associations,
                       report=lambda line: self.stdout.write(line))
        try:
            bound = scp.start()
        except OSError as exc:
            tempfile.tempdir = previous_tempdir
            raise CommandError(f"cannot listen on {scp.host}:{scp.port}: {exc.strerror or exc}") from None
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, lambda *_: stop.set())
        self.stdout.write(f"DICOM SCP {scp.ae_title} listening on {scp.host}:{bound} "
                          f"(C-ECHO, C-STORE, C-FIND; at most {scp.max_associations} associations)")
        try:
            while not stop.wait(0.5):
                pass
        finally:
            self.stdout.write("stopping: no new associations; waiting for running ones")
            scp.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            tempfile.tempdir = previous_tempdir
            self.stdout.write("stopped")
