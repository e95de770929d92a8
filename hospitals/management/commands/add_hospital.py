from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from hospitals.services import hospital_create


class Command(BaseCommand):
    help = "Add a member hospital to the network."

    def add_arguments(self, parser):
        parser.add_argument("code", help="short code, e.g. PPH")
        parser.add_argument("--name", required=True)
        parser.add_argument("--authority", help="assigning authority of its patient ids (default: the code)")
        parser.add_argument("--ae-title", help="DICOM AE title (default: the code)")

    def handle(self, *args, code, name, authority, ae_title, **options):
        try:
            hospital = hospital_create(code=code, name=name, authority=authority, ae_title=ae_title)
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
        self.stdout.write(self.style.SUCCESS(f"added hospital {hospital.code} ({hospital.name}), AE title {hospital.ae_title}"))
