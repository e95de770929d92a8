import sys

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from hospitals.models import Hospital
from hospitals.services import endpoint_create


class Command(BaseCommand):
    help = "Register a hospital's archive endpoint (DICOMweb, DIMSE or push)."

    def add_arguments(self, parser):
        parser.add_argument("code", help="hospital code")
        parser.add_argument("--kind", choices=["dicomweb", "dimse", "push"], required=True)
        parser.add_argument("--name", default="PACS")
        parser.add_argument("--qido", help="QIDO-RS root URL")
        parser.add_argument("--wado", help="WADO-RS root URL (default: the QIDO-RS root)")
        parser.add_argument("--stow", help="STOW-RS root URL")
        parser.add_argument("--auth", choices=["none", "basic", "bearer"], default="none")
        parser.add_argument("--username", default="")
        parser.add_argument("--password-stdin", action="store_true",
                            help="read the password or token from standard input (never from the command line)")
        parser.add_argument("--no-verify-tls", action="store_true", help="test systems only")
        parser.add_argument("--timeout", type=int, default=30)
        parser.add_argument("--ae", help="the archive's AE title")
        parser.add_argument("--host")
        parser.add_argument("--port", type=int)
        parser.add_argument("--calling-ae", help="the platform's AE title (default: the hospital's)")
        parser.add_argument("--retrieve", choices=["c-get", "c-move"], default="c-get")

    def handle(self, *args, code, kind, name, qido, wado, stow, auth, username, password_stdin, no_verify_tls, timeout,
               ae, host, port, calling_ae, retrieve, **options):
        hospital = Hospital.objects.filter(code=code.strip().upper()).first()
        if hospital is None:
            raise CommandError(f"no hospital with code {code!r}")
        secret = sys.stdin.readline().rstrip("\r\n") if password_stdin else ""
        try:
            endpoint = endpoint_create(
                hospital=hospital, kind=kind, name=name, secret=secret, qido_url=qido or "", wado_url=wado or "",
                stow_url=stow or "", auth=auth, username=username, verify_tls=not no_verify_tls, timeout=timeout,
                remote_ae_title=ae or "", host=host or "", port=port, calling_ae_title=calling_ae or "",
                retrieve_method=retrieve)
        except ValidationError as exc:
            messages = exc.message_dict.items() if hasattr(exc, "message_dict") else [("error", exc.messages)]
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in messages)) from None
        self.stdout.write(self.style.SUCCESS(f"added archive endpoint {endpoint.pk} ({endpoint.kind}) for {hospital.code}; "
                                             f"next: manage.py test_archive {endpoint.pk}"))
