"""Identity feed (FHIR, HL7 v2), PIX, PDQ and $match: round trips, permissions, privacy."""

import json

import pytest

from audit.models import AuditEvent, Event
from exchange.mpi import matching
from exchange.mpi.models import Patient, PatientIdentifier
from tests.conftest import api
from tests.dicom import RIC_LI, RIC_WANG, ct_dataset, multipart, to_bytes

pytestmark = pytest.mark.django_db
TEST_KEY = "8BTvCw77-vCIG6ByHmRDKVolGfLaS6wCINJfHq_2X6I="
RIC_OID = "urn:oid:2.16.156.10011.1.5"
FHIR = "application/fhir+json"


@pytest.fixture(autouse=True)
def _mpi_settings(settings):
    if not settings.EXCHANGE_ENCRYPTION_KEYS:
        settings.EXCHANGE_ENCRYPTION_KEYS = [TEST_KEY]
    settings.MPI_LINK_THRESHOLD = matching.DEFAULT_LINK_THRESHOLD
    settings.MPI_REVIEW_THRESHOLD = matching.DEFAULT_REVIEW_THRESHOLD


def patient(authority, local_id, *, hanzi="王小东", family="Wang", given="XiaoDong", birth="1990-03-07",
            gender="male", ric=None, phone=None, one_name=False):
    identifiers = [{"system": authority, "value": local_id}]
    if ric:
        identifiers.append({"system": RIC_OID, "value": ric})
    if one_name:
        names = [{"use": "official", "text": hanzi, "family": family, "given": [given]}]
    else:
        names = [n for n in (
            {"use": "official", "family": hanzi[:1], "given": [hanzi[1:]]} if hanzi else None,
            {"use": "usual", "family": family, "given": [given]} if family else None) if n]
    body = {"resourceType": "Patient", "identifier": identifiers, "name": names, "gender": gender, "birthDate": birth}
    if phone:
        body["telecom"] = [{"system": "phone", "value": phone}]
    return body


def feed(user, body):
    return api(user).post("/api/mpi/fhir/Patient", json.dumps(body), content_type=FHIR)


def test_feed_creates_and_links_then_pix_cross_references(ingest_a, ingest_b, clinician_a):
    r1 = feed(ingest_a, patient("PPH-MRN", "PPH0001", ric=RIC_WANG, phone="13812345678"))
    assert r1.status_code == 201, r1.content
    assert r1["Content-Type"].startswith(FHIR)
    r2 = feed(ingest_b, patient("C1-MRN", "C1-77", hanzi="", family="WANG", given="Xiao Dong", one_name=False))
    assert r2.status_code == 201, r2.content
    assert r1.json()["id"] == r2.json()["id"]  # same enterprise patient, linked by demographics
    body = r1.json()
    text = json.dumps(body, ensure_ascii=False)
    assert RIC_WANG not in text and "13812345678" not in text
    assert {"system": RIC_OID, "value": RIC_WANG[:4] + "*" * 10 + RIC_WANG[-4:]}.items() <= \
        next(i for i in body["identifier"] if i["system"] == RIC_OID).items()

    pix = api(clinician_a).get("/api/mpi/pix", {"identifier": "C1-MRN|C1-77"})
    assert pix.status_code == 200, pix.content
    ids = {(p["valueIdentifier"]["system"], p["valueIdentifier"]["value"]) for p in pix.json()["parameter"]
           if p["name"] == "targetIdentifier"}
    enterprise = Patient.objects.get().enterprise_id
    assert ids == {("PPH-MRN", "PPH0001"), ("C1-MRN", "C1-77"), ("urn:ietf:rfc:3986", f"urn:uuid:{enterprise}")}
    assert AuditEvent.objects.filter(event=Event.QUERY, details__api="pix", actor=clinician_a).exists()


def test_one_humanname_with_hanzi_text_and_pinyin_components(ingest_a):
    r = feed(ingest_a, patient("PPH-MRN", "PPH0002", hanzi="李娜", family="Li", given="Na", one_name=True))
    assert r.status_code == 201, r.content
    ident = PatientIdentifier.objects.get(local_id="PPH0002")
    assert ident.name_ideographic == "李娜" and ident.name_alphabetic == "Li^Na"
    names = r.json()["name"]
    assert any(n.get("text") == "李娜" for n in names) and any(n.get("family") == "Li" for n in names)


def test_pix_refuses_a_patient_without_records_at_the_callers_hospital(ingest_a, clinician_b, clinician_a):
    feed(ingest_a, patient("PPH-MRN", "PPH0001"))
    assert api(clinician_b).get("/api/mpi/pix", {"identifier": "PPH-MRN|PPH0001"}).status_code == 404
    assert api(clinician_a).get("/api/mpi/pix", {"identifier": "PPH-MRN|PPH0001"}).status_code == 200
    assert api(None).get("/api/mpi/pix", {"identifier": "PPH-MRN|PPH0001"}).status_code == 401
    assert api(clinician_a).get("/api/mpi/pix", {"identifier": "nonsense"}).status_code == 400


def test_pix_sees_a_patient_through_studies_at_the_callers_hospital(ingest_a, ingest_b, clinician_b):
    feed(ingest_a, patient("PPH-MRN", "PPH0001", ric=RIC_WANG))
    body, ctype = multipart([to_bytes(ct_dataset(patient_id="C1-9", ric=RIC_WANG))])
    assert api(ingest_b).generic("POST", "/dicomweb/studies", body, content_type=ctype).status_code == 200
    r = api(clinician_b).get("/api/mpi/pix", {"identifier": "PPH-MRN|PPH0001"})
    assert r.status_code == 200
    assert "C1-9" in json.dumps(r.json())


@pytest.mark.parametrize("query", [{"name": "王*"}, {"name": "王小"}, {"name": "wang xiao"}, {"name": "WÁNG*"},
                                   {"name": "*xiaodong"}, {"birthdate": "1990-03-07", "gender": "male"},
                                   {"identifier": RIC_WANG}, {"identifier": f"{RIC_OID}|{RIC_WANG}"},
                                   {"identifier": "PPH-MRN|PPH0001"}])
def test_pdq_finds_by_hanzi_pinyin_partial_birth_date_and_numbers(ingest_a, clinician_a, query):
    feed(ingest_a, patient("PPH-MRN", "PPH0001", ric=RIC_WANG))
    feed(ingest_a, patient("PPH-MRN", "PPH0003", hanzi="李娜", family="Li", given="Na", birth="1985-01-01",
                           gender="female", ric=RIC_LI))
    r = api(clinician_a).get("/api/mpi/pdq", query)
    assert r.status_code == 200, r.content
    bundle = r.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    assert bundle["total"] == 1
    resource = bundle["entry"][0]["resource"]
    assert any(n.get("text") == "王小东" for n in resource["name"])
    assert RIC_WANG not in json.dumps(bundle)
    event = AuditEvent.objects.filter(event=Event.QUERY, details__api="pdq").last()
    assert RIC_WANG not in json.dumps(event.details)


def test_pdq_is_limited_to_visible_patients(ingest_a, clinician_b, django_user_model):
    feed(ingest_a, patient("PPH-MRN", "PPH0001"))
    assert api(clinician_b).get("/api/mpi/pdq", {"name": "王*"}).json()["total"] == 0
    steward = django_user_model.objects.create_user("steward", is_staff=True)
    assert api(steward).get("/api/mpi/pdq", {"name": "王*"}).json()["total"] == 1
    assert api(None).get("/api/mpi/pdq", {"name": "王*"}).status_code == 401


@pytest.mark.parametrize("query", [{}, {"birthdate": "07/03/1990"}, {"gender": "m"}, {"identifier": "110101199003074515"}])
def test_pdq_bad_queries_are_400(clinician_a, query):
    r = api(clinician_a).get("/api/mpi/pdq", query)
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("body", [
    "{not json", json.dumps([1, 2]), json.dumps({"resourceType": "Observation"}),
    json.dumps({"resourceType": "Patient", "identifier": [{"system": "OTHER", "value": "1"}]}),
    json.dumps({"resourceType": "Patient", "identifier": "PPH0001"}),
    json.dumps({"resourceType": "Patient", "identifier": [{"system": "PPH-MRN", "value": "1"}], "birthDate": "1990-13-45"}),
    json.dumps({"resourceType": "Patient", "identifier": [{"system": "PPH-MRN", "value": "1"}], "gender": "M"}),
    json.dumps({"resourceType": "Patient", "identifier": [{"system": "PPH-MRN", "value": "1"}], "name": [{"given": "x"}]}),
])
def test_malformed_fhir_is_400_not_500(ingest_a, body):
    r = api(ingest_a).post("/api/mpi/fhir/Patient", body, content_type=FHIR)
    assert r.status_code == 400, r.content
    assert r.json()["resourceType"] == "OperationOutcome"
    assert not PatientIdentifier.objects.exists()


def test_feed_permissions(ingest_a, clinician_b, regulator):
    assert feed(None, patient("PPH-MRN", "X")).status_code == 401
    assert feed(regulator, patient("PPH-MRN", "X")).status_code == 403
    # another hospital's account cannot register this hospital's local ids
    assert feed(clinician_b, patient("PPH-MRN", "X")).status_code == 400
    r = api(clinician_b).put("/api/mpi/fhir/Patient/PPH/X", json.dumps(patient("C1-MRN", "X")), content_type=FHIR)
    assert r.status_code == 403


def test_update_replaces_demographics_and_refuses_another_number(ingest_a):
    feed(ingest_a, patient("PPH-MRN", "PPH0001", ric=RIC_WANG))
    changed = patient("PPH-MRN", "PPH0001", hanzi="王晓东", given="XiaoDong", ric=RIC_WANG)
    r = api(ingest_a).put("/api/mpi/fhir/Patient/PPH/PPH0001", json.dumps(changed), content_type=FHIR)
    assert r.status_code == 200, r.content
    assert PatientIdentifier.objects.get().name_ideographic == "王^晓东"
    conflict = patient("PPH-MRN", "PPH0001", ric=RIC_LI)
    r = api(ingest_a).put("/api/mpi/fhir/Patient/PPH/PPH0001", json.dumps(conflict), content_type=FHIR)
    assert r.status_code == 409
    assert PatientIdentifier.objects.get().ric_index is not None


def test_match_answers_scores_and_grades(ingest_a, clinician_a):
    feed(ingest_a, patient("PPH-MRN", "PPH0001", phone="13812345678"))
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Patient", "name": [{"family": "Wang", "given": ["Xiaodong"]}],
                                          "birthDate": "1990-03-07", "gender": "male"}}]}
    r = api(clinician_a).post("/api/mpi/fhir/Patient/$match", json.dumps(params), content_type=FHIR)
    assert r.status_code == 200, r.content
    [entry] = r.json()["entry"]
    assert entry["search"]["extension"][0]["valueCode"] == "certain" and 0 < entry["search"]["score"] <= 1
    assert "13812345678" not in r.content.decode()
    assert api(clinician_a).post("/api/mpi/fhir/Patient/$match", "{}", content_type=FHIR).status_code == 400


ADT = ("MSH|^~\\&|HIS|PPH|EXCHANGE|PROVINCE|20260101120000||ADT^{trigger}|MSG{n}|P|2.5\r"
       "EVN|{trigger}|20260101120000\r"
       "PID|1||{pid3}||{pid5}||19900307|M|||||13812345678\r")


def test_hl7v2_adt_register_update_and_merge(ingest_a, clinician_a):
    client = api(ingest_a)
    a01 = ADT.format(trigger="A01", n=1, pid3=f"PPH0001^^^PPH-MRN~{RIC_WANG}^^^RIC^NNCHN", pid5="王^小东~Wang^XiaoDong")
    r = client.generic("POST", "/api/mpi/hl7v2", a01.encode(), content_type="text/plain")
    assert r.status_code == 200, r.content
    assert "MSA|AA|MSG1" in r.content.decode()
    ident = PatientIdentifier.objects.get(local_id="PPH0001")
    assert ident.name_ideographic == "王^小东" and ident.ric_index and ident.get_phone() == "13812345678"
    a04 = ADT.format(trigger="A04", n=2, pid3="PPH0999^^^PPH-MRN", pid5="Zhao^Yun")
    assert client.generic("POST", "/api/mpi/hl7v2", a04.encode(), content_type="text/plain").status_code == 200
    a40 = ADT.format(trigger="A40", n=3, pid3="PPH0001^^^PPH-MRN", pid5="王^小东") + "MRG|PPH0999^^^PPH-MRN\r"
    r = client.generic("POST", "/api/mpi/hl7v2", a40.encode(), content_type="text/plain")
    assert r.status_code == 200, r.content
    assert PatientIdentifier.objects.get(local_id="PPH0999").patient_id == ident.patient_id


@pytest.mark.parametrize("message", ["", "hello", "MSH|^~\\&|HIS|PPH|X|Y|2026||ORU^R01|1|P|2.5\r",
                                     "MSH|^~\\&|HIS|PPH|X|Y|2026||ADT^A01|1|P|2.5\rPID|1||^^^PPH-MRN\r",
                                     "MSH|^~\\&|HIS|PPH|X|Y|2026||ADT^A01|1|P|2.5\rPID|1||P1^^^PPH-MRN||A^B||1990\r"])
def test_malformed_hl7_is_400_with_a_reason(ingest_a, message):
    r = api(ingest_a).generic("POST", "/api/mpi/hl7v2", message.encode(), content_type="text/plain")
    assert r.status_code == 400
    assert "MSA|AR" in r.content.decode()


def test_openapi_schema_documents_the_endpoints(clinician_a):
    r = api(clinician_a).get("/api/schema/", HTTP_ACCEPT="application/json")
    assert r.status_code == 200
    paths = json.loads(r.content)["paths"] if r["Content-Type"].startswith("application/json") else r.content.decode()
    for path in ("/api/mpi/fhir/Patient", "/api/mpi/fhir/Patient/{hospital_code}/{local_id}", "/api/mpi/pix",
                 "/api/mpi/pdq", "/api/mpi/hl7v2"):
        assert path in paths
    assert any(p.endswith("match") for p in paths)


def test_update_that_corrects_demographics_links_a_lone_identifier(ingest_a, ingest_b):
    first = feed(ingest_a, patient("PPH-MRN", "PPH0001")).json()["id"]
    wrong = feed(ingest_b, patient("C1-MRN", "C1-77", birth="1999-12-31")).json()["id"]
    assert wrong != first
    fixed = api(ingest_b).put("/api/mpi/fhir/Patient/CITY1/C1-77", json.dumps(patient("C1-MRN", "C1-77")),
                              content_type=FHIR)
    assert fixed.status_code == 200, fixed.content
    assert fixed.json()["id"] == first
    assert AuditEvent.objects.filter(details__action="patient_link").exists()
