"""Sequencer mode's sealer as a long-running process: chain new audit events as they commit."""

import signal
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, close_old_connections

from audit.services import seal


class Command(BaseCommand):
    help = ("Seal committed audit events into the hash chain, in batches, every --interval seconds "
            "(AUDIT_CHAIN_MODE=sequencer). Run one or more; they take turns on the chain head's lock.")

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=0.2, help="seconds between rounds (default 0.2)")
        parser.add_argument("--once", action="store_true", help="seal what is there and exit")

    def handle(self, *args, interval: float, once: bool, **options):
        if settings.AUDIT_CHAIN_MODE != "sequencer":
            raise CommandError("AUDIT_CHAIN_MODE is inline: record() chains every event itself, there is nothing to seal")
        if interval <= 0:
            raise CommandError("--interval must be positive")
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
        total = 0
        while True:
            try:
                total += seal(wait=True)
            except DatabaseError as exc:
                self.stderr.write(f"sealing failed ({exc.__class__.__name__}); retrying")
                close_old_connections()
            if once or stop:
                break
            try:
                time.sleep(interval)
            except KeyboardInterrupt:
                break
        self.stdout.write(f"sealed {total} events")
