import getpass
import sys

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from hospitals.models import Hospital, Role
from hospitals.services import account_create


class Command(BaseCommand):
    help = "Create a platform account with a role (and its hospital for hospital roles)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=Role.values)
        parser.add_argument("--hospital", help="hospital code (clinician, hospital_admin, ingest)")
        parser.add_argument("--patient", help="enterprise id of the patient (role patient)")
        parser.add_argument("--password-stdin", action="store_true", help="read the password from standard input")

    def handle(self, *args, username, role, hospital, patient, password_stdin, **options):
        hosp = None
        if hospital:
            hosp = Hospital.objects.filter(code=hospital.upper()).first()
            if hosp is None:
                raise CommandError(f"no hospital with code {hospital}")
        pat = None
        if patient:
            from exchange.mpi.models import Patient

            pat = Patient.objects.filter(enterprise_id=patient).first()
            if pat is None:
                raise CommandError("no patient with that enterprise id")
        if password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        elif sys.stdin.isatty():
            password = getpass.getpass("Password: ")
        else:
            password = None
        try:
            if password:
                validate_password(password)
            account_create(username=username, role=role, password=password, hospital=hosp, patient=pat)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        self.stdout.write(self.style.SUCCESS(f"created {role} account {username}" + (f" at {hosp.code}" if hosp else "")))
