"""Identity card and phone numbers: encrypted at rest, rotated without downtime, never shown."""

import json
import logging
from io import StringIO

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection, transaction

from exchange.mpi import crypto, matching
from exchange.mpi.models import BlockingKey, PatientIdentifier, mask_phone, mask_ric
from exchange.mpi.services import Demographics, identifier_resolve
from tests.conftest import PASSWORD, api
from tests.dicom import RIC_LI, RIC_WANG, ct_dataset, multipart, to_bytes

pytestmark = pytest.mark.django_db
PHONE = "13812345678"
OLD_KEY = Fernet.generate_key().decode()
NEW_KEY = Fernet.generate_key().decode()


@pytest.fixture(autouse=True)
def _mpi_settings(settings):
    settings.EXCHANGE_ENCRYPTION_KEYS = [OLD_KEY]
    settings.MPI_LINK_THRESHOLD = matching.DEFAULT_LINK_THRESHOLD
    settings.MPI_REVIEW_THRESHOLD = matching.DEFAULT_REVIEW_THRESHOLD


def register(hospital, local_id, ric=RIC_WANG, phone=PHONE):
    with transaction.atomic():
        return identifier_resolve(hospital=hospital, demographics=Demographics(
            local_id=local_id, name_alphabetic="Wang^XiaoDong", birth_date=None, ric=ric, phone=phone))


def all_database_text() -> str:
    """Every row of every table, as text: the numbers must not be anywhere."""
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            chunks += [repr(row) for row in cursor.fetchall()]
    return "\n".join(chunks)


def test_numbers_are_not_stored_in_plaintext_anywhere(hospital_a, hospital_b):
    register(hospital_a, "A1")
    register(hospital_b, "B1", ric=RIC_LI, phone="13900001111")
    with connection.cursor() as cursor:
        cursor.execute("SELECT ric_encrypted, phone_encrypted FROM mpi_patientidentifier")
        rows = cursor.fetchall()
    assert len(rows) == 2 and all(r[0] and r[1] for r in rows)
    text = all_database_text()
    for number in (RIC_WANG, RIC_LI, PHONE, "13900001111"):
        assert number not in text
    assert BlockingKey.objects.exists() and not BlockingKey.objects.filter(key__contains=":").exists()
    ident = PatientIdentifier.objects.get(local_id="A1")
    assert ident.get_ric() == RIC_WANG and ident.get_phone() == PHONE


def test_rotate_keys_reencrypts_and_old_key_can_be_removed(hospital_a, hospital_b, settings):
    for n in range(7):
        register(hospital_a, f"A{n}", phone=f"1380000000{n}")
    register(hospital_b, "B1", ric=RIC_LI, phone=None)
    settings.EXCHANGE_ENCRYPTION_KEYS = [NEW_KEY, OLD_KEY]
    out = StringIO()
    call_command("rotate_keys", "--batch-size", "3", stdout=out)
    assert out.getvalue().startswith("15 values re-encrypted")  # 8 numbers + 7 phones
    again = StringIO()
    call_command("rotate_keys", stdout=again)
    assert again.getvalue().startswith("0 values re-encrypted, 15 already")
    settings.EXCHANGE_ENCRYPTION_KEYS = [NEW_KEY]
    assert PatientIdentifier.objects.get(local_id="B1").get_ric() == RIC_LI
    assert sorted(i.get_phone() for i in PatientIdentifier.objects.filter(hospital=hospital_a)) == \
        [f"1380000000{n}" for n in range(7)]
    settings.EXCHANGE_ENCRYPTION_KEYS = [OLD_KEY]
    with pytest.raises(InvalidToken):
        PatientIdentifier.objects.get(local_id="B1").get_ric()


def test_keys_are_required_outside_debug(settings):
    settings.EXCHANGE_ENCRYPTION_KEYS = []
    settings.DEBUG = False
    with pytest.raises(ImproperlyConfigured, match="EXCHANGE_ENCRYPTION_KEYS"):
        crypto.encrypt("x")
    settings.DEBUG = True
    assert crypto.decrypt(crypto.encrypt("x")) == "x"
    settings.EXCHANGE_ENCRYPTION_KEYS = ["not a key"]
    with pytest.raises(ImproperlyConfigured, match="Fernet key"):
        crypto.encrypt("x")


def test_masks():
    assert mask_ric("32010119900307123X") == "3201**********123X"
    assert mask_phone(PHONE) == "138******78"


def test_numbers_never_reach_the_logs(ingest_a, clinician_a, caplog):
    caplog.set_level(logging.DEBUG)
    ds = ct_dataset(patient_id="PPH1", ric=RIC_WANG)
    ds.PatientTelephoneNumbers = PHONE
    body, ctype = multipart([to_bytes(ds)])
    assert api(ingest_a).generic("POST", "/dicomweb/studies", body, content_type=ctype).status_code == 200
    # a refused identity (another number for the same local id) must not log it either
    body, ctype = multipart([to_bytes(ct_dataset(patient_id="PPH1", ric=RIC_LI))])
    api(ingest_a).generic("POST", "/dicomweb/studies", body, content_type=ctype)
    r = api(clinician_a).get("/api/mpi/pdq", {"identifier": RIC_WANG})
    assert r.status_code == 200 and r.json()["total"] == 1
    ident = PatientIdentifier.objects.get()
    shown = caplog.text + str(ident) + repr(ident) + json.dumps(r.json())
    for number in (RIC_WANG, RIC_LI, PHONE):
        assert number not in shown
    assert ident.ric_masked in json.dumps(r.json())


def test_admin_list_shows_masked_numbers_only(hospital_a, client, django_user_model):
    register(hospital_a, "A1")
    django_user_model.objects.create_superuser("root", "root@example.org", PASSWORD)
    client.login(username="root", password=PASSWORD)
    for url in ("/admin/mpi/patientidentifier/", f"/admin/mpi/patientidentifier/{PatientIdentifier.objects.get().pk}/change/",
                f"/admin/mpi/patient/{PatientIdentifier.objects.get().patient_id}/change/"):
        page = client.get(url).content.decode()
        assert RIC_WANG not in page and PHONE not in page, url
    assert mask_ric(RIC_WANG) in client.get("/admin/mpi/patientidentifier/").content.decode()
