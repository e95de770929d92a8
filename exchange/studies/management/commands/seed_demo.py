"""Seed the synthetic province once and print the demo accounts.

Everything is synthetic (fixtures/province.py): no real person's data is ever used. Instances
go through the same ingest service as STOW-RS and imports, so the demo exercises the real path.
"""

import io
import sys
import time

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from rest_framework.authtoken.models import Token

from exchange.mpi.identity import ric_blind_index
from exchange.mpi.models import Patient
from exchange.studies import storage
from exchange.studies.models import IngestSource
from exchange.studies.services import Status, batch_count, batch_finish, batch_start, ingest_spool
from fixtures import province as synth
from hospitals.models import Hospital
from hospitals.services import account_create, hospital_create

# Demo-only passwords, printed on every start. They never exist outside a demo database.
ACCOUNTS = [
    ("dr_pph", "clinician", "PPH", "demo-clinician-pph"),
    ("dr_city", "clinician", "CITY1", "demo-clinician-city"),
    ("admin_pph", "hospital_admin", "PPH", "demo-admin-pph"),
    ("gateway_pph", "ingest", "PPH", "demo-gateway-pph"),
    ("regulator", "regulator", None, "demo-regulator"),
    ("patient", "patient", None, "demo-patient-01"),
]
# One hospital sends GB18030, as many Chinese PACS still do.
CHARSET = {"CNTY": "GB18030"}


class Command(BaseCommand):
    help = "Seed the synthetic demo province (once) and print the demo accounts."

    def add_arguments(self, parser):
        parser.add_argument("--persons", type=int, default=12, help="synthetic persons (default 12)")
        parser.add_argument("--ct-slices", type=int, default=40)
        parser.add_argument("--ct-size", type=int, default=512)
        parser.add_argument("--seed", type=int, default=2026)
        parser.add_argument("--force", action="store_true", help="seed even if hospitals exist")

    def handle(self, *args, persons, ct_slices, ct_size, seed, force, **options):
        if Hospital.objects.exists() and not force:
            self.stdout.write("Demo province already seeded (run `make clean-demo` to start over).")
        else:
            self.seed(persons=persons, ct_slices=ct_slices, ct_size=ct_size, seed=seed)
        self.print_accounts()

    def seed(self, *, persons, ct_slices, ct_size, seed):
        started = time.monotonic()
        province = synth.generate_province(seed=seed, persons=persons, ct_slices=ct_slices, ct_size=ct_size)
        hospitals = {
            h.code: hospital_create(code=h.code, name=h.name, authority=h.authority, ae_title=h.ae_title)
            for h in province.hospitals
        }
        batches = {code: batch_start(hospital=h, actor=None, source=IngestSource.IMPORT, label="synthetic province")
                   for code, h in hospitals.items()}
        total = sum(s.n_instances for s in province.studies)
        done = stored = 0
        for study in province.studies:
            code = study.registration.hospital_code
            for ds in synth.study_datasets(study, seed=seed, ct_size=ct_size, charset=CHARSET.get(code, "ISO_IR 192")):
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                buf.seek(0)
                result = ingest_spool(storage.spool_stream(buf), hospital=hospitals[code], actor=None,
                                      source=IngestSource.IMPORT, batch=batches[code])
                batch_count(batches[code], result, item=f"{study.modality} {ds.InstanceNumber}")
                if result.status is Status.REJECTED:
                    raise CommandError(f"synthetic instance refused: {result.message}")
                stored += result.status is Status.STORED
                done += 1
                if sys.stderr.isatty():
                    sys.stderr.write(f"\rseeding synthetic province: {done}/{total} instances")
        for batch in batches.values():
            batch_finish(batch)
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        self.create_accounts(province, hospitals)
        self.stdout.write(
            f"Seeded {len(hospitals)} hospitals, {len(province.persons)} persons, {len(province.studies)} studies, "
            f"{stored} instances in {time.monotonic() - started:.0f} s."
        )

    def _patient_for_demo(self, province):
        """The person known at the most hospitals under one identity card number."""
        by_person: dict[int, set[str]] = {}
        for reg in province.registrations:
            if reg.ric:
                by_person.setdefault(reg.person_id, set()).add(reg.hospital_code)
        person_id = max(by_person, key=lambda p: (len(by_person[p]), -p))
        person = next(p for p in province.persons if p.person_id == person_id)
        return Patient.objects.get(ric_index=ric_blind_index(person.ric))

    @transaction.atomic
    def create_accounts(self, province, hospitals):
        patient = self._patient_for_demo(province)
        users = {}
        for username, role, code, password in ACCOUNTS:
            users[username] = account_create(username=username, role=role, password=password,
                                             hospital=hospitals.get(code) if code else None,
                                             patient=patient if role == "patient" else None)
            if role == "ingest":
                Token.objects.get_or_create(user=users[username])
        self.seed_history(patient, users, hospitals)

    def seed_history(self, patient, users, hospitals):
        """A little history through the real services, so every role has something to see: the
        demo patient lets First City Hospital see their images, and a First City clinician once
        used emergency access to another patient known only at the Provincial hospital (it waits
        in the regulator's break-glass review queue)."""
        from consent.models import BreakGlassReason, Scope
        from consent.services import break_glass_open, consent_grant

        consent_grant(actor=users["patient"], patient=patient, scope=Scope.HOSPITAL, hospital=hospitals["CITY1"])
        other = (Patient.objects.exclude(pk=patient.pk).filter(studies__hospital=hospitals["PPH"])
                 .exclude(studies__hospital=hospitals["CITY1"]).order_by("pk").first())
        if other is not None:
            break_glass_open(actor=users["dr_city"], patient=other, reason=BreakGlassReason.UNCONSCIOUS,
                             reason_text="Brought in unconscious after a road accident; prior chest CT needed.")

    def print_accounts(self):
        from django.contrib.auth import get_user_model

        User = get_user_model()
        lines = ["", "Demo accounts (synthetic data only; passwords are for this demo database):"]
        for username, role, code, password in ACCOUNTS:
            user = User.objects.filter(username=username).select_related("profile__hospital").first()
            if user is None:
                continue
            where = user.profile.hospital.name if user.profile.hospital else ""
            lines.append(f"  {role:<15} user {username:<12} password {password:<20} {where}")
        patient_user = User.objects.filter(username="patient").select_related("profile__patient").first()
        if patient_user is not None and patient_user.profile.patient is not None:
            phones = {i.get_phone() for i in patient_user.profile.patient.identifiers.all()} - {None}
            if len(phones) == 1:
                lines.append(f"  patient portal  /me/ — phone {phones.pop()}; the one-time code is printed in this console")
        token = Token.objects.filter(user__username="gateway_pph").first()
        if token:
            lines.append(f"  STOW-RS/QIDO-RS token of gateway_pph: Authorization: Token {token.key}")
        self.stdout.write("\n".join(lines) + "\n")
