"""Every URL declares its audit behaviour, and every URL that returns patient data writes its event.

The URL patterns are enumerated from the resolver, so a new URL is covered automatically: a
pattern missing from EXPECTATIONS fails ``test_every_url_declares_its_audit_behaviour`` (and its
own parametrized case) with its name. Each entry says how to call the URL on seeded data (a study
at hospital A, stowed through STOW-RS), who calls it, and which events it must write — or why it
returns no patient data. For each read, a clinician of hospital B asking for A's study is refused
and audited (ACCESS_DENIED naming the study), or finds nothing (searches).

Transactional tests (no test-wide transaction): an event is checked on a second database
connection, which sees only committed rows, so "audited before the response" means committed.
For streamed WADO-RS answers the event is checked before the first byte of the stream is read.
(Issue #4, "Completeness"; DICOM PS3.15 A.5 / IHE ATNA event types.)
"""

import io
import json
import zipfile
from dataclasses import dataclass

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.test import Client
from django.urls import URLResolver, get_resolver

from audit.models import AuditEvent, Event, Outcome
from consent import services as consent_services
from consent.models import Scope
from exchange.mpi.models import ReviewItem
from exchange.studies.models import Instance, Series, Study
from tests.conftest import PASSWORD, api, make_patient_user
from tests.dicom import ct_dataset, multipart, to_bytes

pytestmark = pytest.mark.django_db(transaction=True)

ADMIN = "admin (Django admin, staff only)"
STATIC = "static files"
PATIENT_ID, PATIENT_NAME = "PPH0001", "Wang"  # identifiers of the seeded patient: must never leak
QIDO_JSON = "application/dicom+json"


# --- the URL space, from the resolver ----------------------------------------------------------


def _route(pattern) -> str:
    """A pattern's text as a URL fragment (regex anchors dropped)."""
    return str(pattern).removeprefix("^").removesuffix("$")


def url_patterns() -> dict[str, list[str]]:
    """Every URL pattern, keyed by its (namespaced) name, or its full route when unnamed.

    The Django admin is one key: its pages are for staff only and are tested as one entry.
    """
    found: dict[str, list[str]] = {}

    def walk(patterns, prefix: str, namespaces: tuple[str, ...]) -> None:
        for p in patterns:
            route = prefix + _route(p.pattern)
            if isinstance(p, URLResolver):
                walk(p.url_patterns, route, namespaces + ((p.namespace,) if p.namespace else ()))
                continue
            if "admin" in namespaces:
                key = ADMIN
            elif route.startswith("static/"):
                key = STATIC
            elif p.name:
                key = ":".join(namespaces + (p.name,))
            else:
                key = route
            found.setdefault(key, []).append(route)

    walk(get_resolver().url_patterns, "", ())
    return found


# --- the expectation table ---------------------------------------------------------------------


@dataclass(frozen=True)
class Writes:
    """One audit event a call must write (committed before the response)."""

    event: str
    # "seeded": names the seeded study and its patient; "patient": names the seeded patient;
    # "new": names some study; None: not checked.
    study: str | None = None
    outcome: str = Outcome.SUCCESS
    by_caller: bool = True  # False: the event names no account (e.g. a failed login)


@dataclass(frozen=True)
class Call:
    """A concrete request on the seeded data (path placeholders: see ``seeded``)."""

    method: str
    path: str
    actor: str | None  # fixture name of the caller; None: anonymous
    writes: tuple[Writes, ...]
    status: int = 200
    logged_in: bool = True  # False: the client starts anonymous (login form)
    api: bool = False  # token-authenticated REST/DICOMweb client instead of a browser session
    body: str = ""  # name of a body builder in BODIES
    accept: str = ""
    shows: str = ""  # text the answer must contain (the data really was returned)
    # How a clinician of hospital B fares with the same request: "refused" (403/404 and an
    # ACCESS_DENIED event naming the study), "forbidden" (403 and an ACCESS_DENIED event: a page
    # for another role), "empty" (a search that finds nothing of A's), or None with a reason in `why`.
    other_hospital: str | None = "refused"
    why: str = ""


@dataclass(frozen=True)
class NoPatientData:
    reason: str
    check: str = ""  # name of the check in CHECKS that proves the stated behaviour ("": none yet)


UID = "{study_uid}"
SE, SOP = "{series_uid}", "{sop_uid}"
INSTANCE = f"/dicomweb/studies/{UID}/series/{SE}/instances/{SOP}"
STUDY_READ = Writes(Event.INSTANCES_ACCESSED, study="seeded")
STUDY_SENT = Writes(Event.INSTANCES_TRANSFERRED, study="seeded")
SEARCH = Writes(Event.QUERY)
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'

EXPECTATIONS: dict[str, tuple[Call, ...] | NoPatientData] = {
    # --- pages (exchange/viewer/urls.py) ---
    "home": NoPatientData("sends people to their start page; the regulator's overview shows per-hospital counts",
                          check="home_shows_no_patient"),
    "search": (
        Call("GET", f"/search/?patient_id={PATIENT_ID}", "clinician_a", (SEARCH,), shows=PATIENT_ID, other_hospital="empty"),
    ),
    "study": (Call("GET", "/studies/{study_pk}/", "clinician_a", (STUDY_READ,), shows=PATIENT_ID),),
    "series": (Call("GET", "/studies/{study_pk}/series/{series_pk}/", "clinician_a", (STUDY_READ,)),),
    "ingest-summary": (
        # Counts and batches of the admin's own hospital: no patient is named on the page.
        Call("GET", "/hospital/ingest/", "admin_a", (), other_hospital=None,
             why="hospital totals only; refused to everyone but the hospital's admin (tests/viewer)"),
        # Uploading a CD/USB ZIP imports it (eager Celery in tests): IMPORT plus the stored study.
        Call("POST", "/hospital/ingest/", "admin_a", (Writes(Event.IMPORT), Writes(Event.INSTANCES_STORED, study="new")),
             status=302, body="zip_upload", other_hospital=None, why="a write into the admin's own hospital"),
    ),
    # --- accounts ---
    "login": (
        Call("POST", "/accounts/login/", "clinician_a", (Writes(Event.USER_AUTHENTICATION),), status=302,
             logged_in=False, body="good_login", other_hospital=None, why="no patient data"),
        Call("POST", "/accounts/login/", "clinician_a",
             (Writes(Event.USER_AUTHENTICATION, outcome=Outcome.MINOR_FAILURE, by_caller=False),),
             logged_in=False, body="bad_login", other_hospital=None, why="no patient data"),
    ),
    # Not audited today: ATNA's User Authentication event covers logout too (reported, issue #4).
    "logout": NoPatientData("ends the session", check="logout_redirects"),
    # --- DICOMweb (exchange/dicomweb/urls.py) ---
    "dicomweb-studies": (
        Call("GET", f"/dicomweb/studies?PatientID={PATIENT_ID}", "clinician_a", (SEARCH,), api=True, shows=UID,
             other_hospital="empty"),
        Call("POST", "/dicomweb/studies", "ingest_a", (Writes(Event.INSTANCES_STORED, study="new"),), api=True,
             body="stow_new_study", other_hospital=None, why="a STOW stores into the caller's own hospital"),
    ),
    "dicomweb-study": (
        Call("GET", f"/dicomweb/studies/{UID}", "clinician_a", (STUDY_SENT,), api=True, accept=MULTIPART_DICOM,
             shows="DICM"),
        Call("POST", f"/dicomweb/studies/{UID}", "ingest_a", (Writes(Event.INSTANCES_STORED, study="seeded"),),
             api=True, body="stow_into_seeded_study", other_hospital=None,
             why="a STOW stores into the caller's own hospital (a copy, decisions/0003)"),
    ),
    "dicomweb-study-metadata": (
        Call("GET", f"/dicomweb/studies/{UID}/metadata", "clinician_a", (STUDY_READ,), api=True, shows=PATIENT_ID),
    ),
    "dicomweb-study-series": (
        Call("GET", f"/dicomweb/studies/{UID}/series", "clinician_a", (SEARCH,), api=True, shows=SE,
             other_hospital="empty"),
    ),
    "dicomweb-study-instances": (
        Call("GET", f"/dicomweb/studies/{UID}/instances", "clinician_a", (SEARCH,), api=True, shows=SOP,
             other_hospital="empty"),
    ),
    "dicomweb-series": (
        Call("GET", f"/dicomweb/studies/{UID}/series/{SE}", "clinician_a", (STUDY_SENT,), api=True, shows="DICM"),
    ),
    "dicomweb-series-metadata": (
        Call("GET", f"/dicomweb/studies/{UID}/series/{SE}/metadata", "clinician_a", (STUDY_READ,), api=True,
             shows=PATIENT_ID),
    ),
    "dicomweb-series-instances": (
        Call("GET", f"/dicomweb/studies/{UID}/series/{SE}/instances", "clinician_a", (SEARCH,), api=True, shows=SOP,
             other_hospital="empty"),
    ),
    "dicomweb-instance": (Call("GET", INSTANCE, "clinician_a", (STUDY_SENT,), api=True, shows="DICM"),),
    "dicomweb-instance-metadata": (
        Call("GET", f"{INSTANCE}/metadata", "clinician_a", (STUDY_READ,), api=True, shows=PATIENT_ID),
    ),
    "dicomweb-instance-rendered": (
        Call("GET", f"{INSTANCE}/rendered", "clinician_a", (STUDY_READ,), api=True, accept="image/png", shows="PNG"),
    ),
    "dicomweb-frames": (
        Call("GET", f"{INSTANCE}/frames/1", "clinician_a", (STUDY_READ,), api=True,
             accept='multipart/related; type="application/octet-stream"', shows="application/octet-stream"),
    ),
    "dicomweb-frame-rendered": (
        Call("GET", f"{INSTANCE}/frames/1/rendered", "clinician_a", (STUDY_READ,), api=True, accept="image/jpeg",
             shows="JFIF"),
    ),
    "dicomweb-all-series": (
        Call("GET", f"/dicomweb/series?PatientID={PATIENT_ID}", "clinician_a", (SEARCH,), api=True, shows=SE,
             other_hospital="empty"),
    ),
    "dicomweb-all-instances": (
        Call("GET", f"/dicomweb/instances?PatientID={PATIENT_ID}", "clinician_a", (SEARCH,), api=True, shows=SOP,
             other_hospital="empty"),
    ),
    # --- API documentation ---
    "api-schema": NoPatientData("the OpenAPI schema describes the API, it holds no data", check="schema_has_no_data"),
    "api-docs": NoPatientData("the ReDoc page that renders the schema", check="schema_has_no_data"),
    # --- federated search (exchange/federation/api, issue #6) ---
    "federation-search": (
        Call("GET", "/api/federation/search?patient={enterprise_id}", "clinician_a", (Writes(Event.QUERY, study="patient"),),
             api=True, shows=PATIENT_ID, other_hospital=None,
             why="another hospital's clinician gets 404 + ACCESS_DENIED naming the patient (tests/federation/test_search.py)"),
    ),
    # Prefetch of priors (retrieve proxy, issue #6): the ordering hospital's gateway names its patient; the
    # request is audited (the fetched instances are audited per study by the task, with {"prefetch": true}).
    "federation-prefetch": (
        Call("POST", "/api/federation/prefetch", "ingest_a", (Writes(Event.INSTANCES_TRANSFERRED, study="patient"),),
             status=202, api=True, body="prefetch_order", other_hospital="forbidden"),
    ),
    # --- Django admin ---
    ADMIN: NoPatientData("Django admin, staff only (no platform role is staff); its Patient/Study pages are not "
                         "audited, so staff accounts must stay limited to operators", check="admin_refuses_non_staff"),
    # --- regulator pages (audit/urls.py, issue #4): role regulator; anyone else 403 + ACCESS_DENIED ---
    "audit:dashboard": (Call("GET", "/audit/", "regulator", (Writes(Event.QUERY),), other_hospital="forbidden"),),
    "audit:events": (Call("GET", "/audit/events/", "regulator", (Writes(Event.QUERY),), other_hospital="forbidden"),),
    "audit:patient": (
        Call("GET", "/audit/patients/{enterprise_id}/", "regulator", (Writes(Event.QUERY, study="patient"),),
             other_hospital="forbidden"),
    ),
    "audit:break-glass": (Call("GET", "/audit/break-glass/", "regulator", (Writes(Event.QUERY),), other_hospital="forbidden"),),
    "audit:export": (
        Call("GET", "/audit/export?format=csv", "regulator", (Writes(Event.EXPORT),), other_hospital="forbidden"),
    ),
    # --- patient index (exchange/mpi/urls.py, exchange/mpi/api/urls.py, issue #3) ---
    "mpi-review": (
        Call("GET", "/mpi/review/", "admin_a", (Writes(Event.QUERY),), other_hospital=None,
             why="clinicians are refused by role (403, not audited); admins see their hospital's items (tests/mpi)"),
    ),
    "mpi-review-detail": (
        # A possible match between hospital B's record and hospital A's new one (seeded): both sides are shown.
        Call("GET", "/mpi/review/{review_pk}/", "admin_a", (Writes(Event.PATIENT_RECORD),), shows="C1-5",
             other_hospital=None, why="see mpi-review; another hospital's admin gets 404 (tests/mpi/test_review.py)"),
        # The decision (here: two different people) is a patient record change (ATNA Patient Record).
        Call("POST", "/mpi/review/{review_pk}/", "admin_a", (Writes(Event.PATIENT_RECORD),), status=302,
             body="review_reject", other_hospital=None, why="see mpi-review"),
    ),
    "mpi-pix": (
        Call("GET", f"/api/mpi/pix?identifier=PPH-MRN|{PATIENT_ID}", "clinician_a", (Writes(Event.QUERY, study="patient"),),
             api=True, other_hospital=None,
             why="another hospital's clinician gets 404 + ACCESS_DENIED naming the patient (tests/mpi/test_api.py)"),
    ),
    "mpi-pdq": (
        Call("GET", "/api/mpi/pdq?name=Wang", "clinician_a", (Writes(Event.QUERY),), api=True, other_hospital=None,
             why="PDQ answers only patients the caller may see (tests/mpi/test_api.py)"),
    ),
    "mpi-fhir-match": (
        # FHIR R4 Patient $match: only patients the caller may see are scored, so B finds nothing of A's.
        Call("POST", "/api/mpi/fhir/Patient/$match", "clinician_a", (Writes(Event.QUERY),), api=True,
             body="fhir_match", shows="{enterprise_id}", other_hospital="empty"),
    ),
    "mpi-fhir-patient": (
        # A new local id of hospital A (201 Created), then the seeded patient's own local id again (200).
        Call("POST", "/api/mpi/fhir/Patient", "ingest_a", (Writes(Event.PATIENT_RECORD),), api=True, status=201,
             body="fhir_patient_new", other_hospital=None,
             why="identity feed of the caller's own hospital (other hospitals: tests/mpi/test_api.py)"),
        Call("POST", "/api/mpi/fhir/Patient", "ingest_a", (Writes(Event.PATIENT_RECORD, study="patient"),), api=True,
             body="fhir_patient_seeded", other_hospital=None, why="identity feed of the caller's own hospital"),
    ),
    "mpi-fhir-patient-update": (
        Call("PUT", "/api/mpi/fhir/Patient/PPH/PPH0001", "ingest_a", (Writes(Event.PATIENT_RECORD, study="patient"),),
             api=True, body="fhir_patient_seeded", other_hospital=None,
             why="identity feed of the caller's own hospital; other hospitals' accounts get 403 (tests/mpi)"),
    ),
    "mpi-hl7v2": (
        # ADT^A04 (register) for the seeded patient's local id: the ACK is AA and the event names the patient.
        Call("POST", "/api/mpi/hl7v2", "ingest_a", (Writes(Event.PATIENT_RECORD, study="patient"),), api=True,
             body="adt_a04", shows="MSA|AA", other_hospital=None, why="identity feed of the caller's own hospital"),
    ),
    # --- hospital admin pages (hospitals/urls.py): archive endpoints of the admin's own hospital ---
    "hospitals:profile": NoPatientData("the hospital's own profile and archive list"),
    "hospitals:endpoint-add": NoPatientData("configures a hospital archive (AE title, host, port)"),
    "hospitals:endpoint": NoPatientData("one archive's configuration and sync status"),
    "hospitals:endpoint-test": NoPatientData("C-ECHO to the archive"),
    # Unclear: a sync imports studies from the archive; the import must write IMPORT/INSTANCES_STORED.
    "hospitals:endpoint-sync": NoPatientData("starts a sync job; the import it runs is audited by the importer"),
    "hospitals:endpoint-live": NoPatientData("live progress of a sync job (counts)"),
    "hospitals:endpoint-status": NoPatientData("sync job status as JSON (counts)"),
    # --- patient portal, share links, access requests, break-glass (consent/urls.py) ---
    "portal-login": NoPatientData("asks for a phone number / identity card number to send a code"),
    # Unclear: verifying the code logs the patient in; it should write USER_AUTHENTICATION.
    "portal-code": NoPatientData("verifies the one-time code (a login)"),
    "portal-home": (
        Call("GET", "/me/", "patient_a", (Writes(Event.QUERY, study="patient"),), other_hospital=None,
             why="a patient sees only their own record"),
    ),
    "portal-consents": (
        Call("GET", "/me/consents/", "patient_a", (Writes(Event.QUERY, study="patient"),), other_hospital=None,
             why="a patient sees only their own record"),
    ),
    "portal-consent-revoke": (
        Call("POST", "/me/consents/{consent_pk}/revoke/", "patient_a", (Writes(Event.CONSENT_CHANGE, study="patient"),),
             status=302, other_hospital=None,
             why="the patient's own consent; another patient's is 404 (tests/consent/test_portal.py)"),
    ),
    "portal-request-decide": (
        # Hospital B's clinician asked (seeded); the patient refuses, so B still sees nothing.
        Call("POST", "/me/requests/{request_pk}/", "patient_a", (Writes(Event.CONSENT_CHANGE, study="patient"),),
             status=302, body="deny_request", other_hospital=None, why="the patient's own request"),
    ),
    "portal-history": (
        Call("GET", "/me/history/", "patient_a", (Writes(Event.QUERY, study="patient"),), other_hospital=None,
             why="a patient sees only their own record"),
    ),
    "portal-share-create": (
        Call("GET", "/me/studies/{study_pk}/share/", "patient_a", (Writes(Event.QUERY, study="seeded"),),
             other_hospital=None, why="the patient's own study"),
        Call("POST", "/me/studies/{study_pk}/share/", "patient_a", (Writes(Event.CONSENT_CHANGE, study="seeded"),),
             status=302, body="share_form", other_hospital=None, why="a link to the patient's own study"),
    ),
    "portal-share": (
        Call("GET", "/me/share/{share_pk}/", "patient_a", (Writes(Event.QUERY, study="seeded"),), shows="<svg",
             other_hospital=None, why="the patient's own link"),
    ),
    "portal-share-revoke": (
        Call("POST", "/me/share/{share_pk}/revoke/", "patient_a", (Writes(Event.CONSENT_CHANGE, study="seeded"),),
             status=302, other_hospital=None, why="the patient's own link"),
    ),
    "share": (
        # Share-link use is its own event (issue #4 vocabulary): no account, the link in details.
        Call("GET", "/s/{share_token}/", None, (Writes(Event.SHARE_LINK_USE, study="seeded", by_caller=False),),
             logged_in=False, shows="/s/{share_token}/img/{instance_pk}/", other_hospital=None,
             why="a bearer link: unknown links are audited as ACCESS_DENIED, refused ones as failed uses"),
        # A PIN-protected link: the right PIN is a use, a wrong one a failed use (counted, then locked).
        Call("POST", "/s/{pin_share_token}/", None, (Writes(Event.SHARE_LINK_USE, study="seeded", by_caller=False),),
             status=302, logged_in=False, body="right_pin", other_hospital=None, why="a bearer link"),
        Call("POST", "/s/{pin_share_token}/", None,
             (Writes(Event.SHARE_LINK_USE, study="seeded", outcome=Outcome.MINOR_FAILURE, by_caller=False),),
             logged_in=False, body="wrong_pin", shows="Wrong PIN", other_hospital=None, why="a bearer link"),
    ),
    "share-image": (
        Call("GET", "/s/{share_token}/img/{instance_pk}/", None,
             (Writes(Event.SHARE_LINK_USE, study="seeded", by_caller=False),), logged_in=False, shows="JFIF",
             other_hospital=None, why="a bearer link"),
    ),
    "consent-request": NoPatientData("the access request form; sending it is audited by access_request_create"),
    "consent-requests": (
        Call("GET", "/consent/requests/", "clinician_a", (Writes(Event.QUERY),), other_hospital=None,
             why="the clinician's own requests"),
    ),
    "consent-break-glass": (
        # Hospital B's clinician opens emergency access to A's study: BREAK_GLASS naming it, flagged for review.
        Call("POST", "/consent/break-glass/?study={study_pk}", "clinician_b",
             (Writes(Event.BREAK_GLASS, study="seeded"),), status=302, body="break_glass", other_hospital=None,
             why="break-glass is the audited emergency path itself (other roles: 403, tests/consent)"),
    ),
    "api-consent-search": (
        # FHIR R4 Consent search by the patient's enterprise id: for the patient and regulators only;
        # clinicians (of any hospital) get 403 + ACCESS_DENIED.
        Call("GET", "/api/consent/Consent?patient={enterprise_id}", "patient_a",
             (Writes(Event.PATIENT_RECORD, study="patient"),), api=True, shows="Consent/{consent_pk}",
             other_hospital="forbidden"),
        Call("GET", "/api/consent/Consent?patient={enterprise_id}", "regulator",
             (Writes(Event.PATIENT_RECORD, study="patient"),), api=True, shows="Consent/{consent_pk}",
             other_hospital=None, why="oversight; see the patient's call"),
    ),
}


# --- seeded data, request bodies, no-patient-data checks ---------------------------------------


def _stow(user, *datasets) -> None:
    body, ctype = multipart([to_bytes(d) for d in datasets])
    assert api(user).generic("POST", "/dicomweb/studies", body, content_type=ctype).status_code == 200


@pytest.fixture
def seeded(ingest_a, ingest_b, clinician_a, clinician_b, admin_a, regulator):
    """One study at hospital A (two CT instances in one series), stowed through STOW-RS, and what
    the patient index and consent URLs act on, made through the real endpoints and services:
    a review item (hospital B's record and a near-identical new one at A), the patient's account
    with a consent (for A's own clinician, so B stays refused), a pending access request from B's
    clinician, and two share links to the study (one with a PIN)."""
    first = ct_dataset(patient_id=PATIENT_ID, instance_number=1)
    second = ct_dataset(patient_id=PATIENT_ID, instance_number=2, study_uid=first.StudyInstanceUID,
                        series_uid=first.SeriesInstanceUID)
    _stow(ingest_a, first, second)
    study = Study.objects.get(study_instance_uid=first.StudyInstanceUID)
    # A possible match for the review queue: B knew Liu Xiaoming; A registers "Liu Xiaomin" (a typo).
    _stow(ingest_b, ct_dataset(patient_id="C1-5", name="Liu^Xiaoming=刘^晓明", birth_date="19750505", accession="B5"))
    _stow(ingest_a, ct_dataset(patient_id="PPH-5", name="Liu^Xiaomin", birth_date="19750505", accession="A5"))
    review = ReviewItem.objects.get()
    patient_user = make_patient_user(study.patient, username="patient_a")
    consent = consent_services.consent_grant(actor=patient_user, patient=study.patient, scope=Scope.CLINICIAN,
                                             clinician=clinician_a)
    access_request = consent_services.access_request_create(
        actor=clinician_b, patient=study.patient, study=study, reason="Follow-up at First City: the prior CT")
    share, share_token = consent_services.share_link_create(actor=patient_user, study=study)
    _, pin_share_token = consent_services.share_link_create(actor=patient_user, study=study, pin=SHARE_PIN)
    return {
        "study": study,
        "study_uid": first.StudyInstanceUID,
        "series_uid": first.SeriesInstanceUID,
        "sop_uid": first.SOPInstanceUID,
        "study_pk": study.pk,
        "series_pk": Series.objects.get(study=study).pk,
        "enterprise_id": study.patient.enterprise_id,
        "instance_pk": Instance.objects.get(sop_instance_uid=first.SOPInstanceUID).pk,
        "review_pk": review.pk,
        "patient_user": patient_user,
        "consent_pk": consent.pk,
        "request_pk": access_request.pk,
        "share_pk": share.pk,
        "share_token": share_token,
        "pin_share_token": pin_share_token,
    }


def _stow_body(datasets):
    body, ctype = multipart([to_bytes(d) for d in datasets])
    return {"data": body, "content_type": ctype}


def _zip_of(ds) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("DICOM/IM0001", to_bytes(ds))
    return buf.getvalue()


SHARE_PIN = "2468"
FHIR = "application/fhir+json"


def _fhir_body(resource: dict) -> dict:
    return {"data": json.dumps(resource), "content_type": FHIR}


def _fhir_patient(local_id: str, hanzi: str, family: str, given: str, birth: str, gender: str) -> dict:
    """A FHIR R4 Patient of hospital A's identity feed: hanzi and pinyin as two HumanNames."""
    return {"resourceType": "Patient", "identifier": [{"system": "PPH-MRN", "value": local_id}],
            "name": [{"use": "official", "family": hanzi[:1], "given": [hanzi[1:]]},
                     {"use": "usual", "family": family, "given": [given]}],
            "gender": gender, "birthDate": birth}


# HL7 v2.5 ADT^A04 (register a patient) for the seeded patient's local id, ER7 with CR separators.
ADT_A04 = ("MSH|^~\\&|HIS|PPH|EXCHANGE|PROVINCE|20260101120000||ADT^A04|MSG1|P|2.5\r"
           "EVN|A04|20260101120000\r"
           f"PID|1||{PATIENT_ID}^^^PPH-MRN||王^小东~Wang^XiaoDong||19900307|M\r")

BODIES = {
    "good_login": lambda s: {"data": {"username": "dr_a", "password": PASSWORD}},
    "bad_login": lambda s: {"data": {"username": "dr_a", "password": "not-the-password"}},
    "stow_new_study": lambda s: _stow_body([ct_dataset(patient_id="PPH0009", name="Zhao^Lei", accession="ACC9")]),
    "stow_into_seeded_study": lambda s: _stow_body([ct_dataset(
        patient_id=PATIENT_ID, study_uid=s["study_uid"], series_uid=s["series_uid"], instance_number=3)]),
    "zip_upload": lambda s: {"data": {"archive": SimpleUploadedFile(
        "cd.zip", _zip_of(ct_dataset(patient_id="PPH0010", name="Sun^Li", accession="ACC10")), "application/zip")}},
    "prefetch_order": lambda s: {"data": json.dumps({"patient": {"identifier": PATIENT_ID, "hospital": "PPH"},
                                                     "reason": "order"}).encode(), "content_type": "application/json"},
    "fhir_match": lambda s: _fhir_body({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": {
        "resourceType": "Patient", "name": [{"family": "Wang", "given": ["XiaoDong"]}], "birthDate": "1990-03-07",
        "gender": "male"}}]}),
    "fhir_patient_new": lambda s: _fhir_body(_fhir_patient("PPH0002", "李娜", "Li", "Na", "1985-01-01", "female")),
    "fhir_patient_seeded": lambda s: _fhir_body(_fhir_patient(PATIENT_ID, "王小东", "Wang", "XiaoDong", "1990-03-07",
                                                              "male")),
    "adt_a04": lambda s: {"data": ADT_A04.encode(), "content_type": "text/plain"},
    "deny_request": lambda s: {"data": {"decision": "deny"}},
    "review_reject": lambda s: {"data": {"action": "reject", "comment": "different people"}},
    "break_glass": lambda s: {"data": {"reason": "unconscious",
                                       "reason_text": "Unconscious after a road accident, prior CT needed now"}},
    "share_form": lambda s: {"data": {"hours": 24, "pin": ""}},
    "right_pin": lambda s: {"data": {"pin": SHARE_PIN}},
    "wrong_pin": lambda s: {"data": {"pin": "0000"}},
}


def _no_identifiers(content: bytes) -> None:
    assert PATIENT_ID.encode() not in content and PATIENT_NAME.encode() not in content


def home_shows_no_patient(seeded, users) -> None:
    assert session(users["clinician_a"]).get("/").status_code == 302  # to the search page
    response = session(users["regulator"]).get("/")
    assert response.status_code == 200
    _no_identifiers(response.content)


def logout_redirects(seeded, users) -> None:
    assert session(users["clinician_a"]).post("/accounts/logout/").status_code == 302


def schema_has_no_data(seeded, users) -> None:
    for path in ("/api/schema/", "/api/docs/"):
        response = session(users["clinician_a"]).get(path)
        assert response.status_code == 200
        # Not the patient id: the schema's examples may use the same synthetic style of id.
        for uid in (seeded["study_uid"], seeded["sop_uid"]):
            assert uid.encode() not in response.content


def admin_refuses_non_staff(seeded, users) -> None:
    routes = url_patterns()[ADMIN]
    assert routes, "no admin URL patterns"
    for user in (None, users["clinician_a"], users["admin_a"], users["regulator"]):
        assert user is None or not user.is_staff
        for path in ("/admin/", "/admin/mpi/patient/", "/admin/studies/study/", f"/admin/studies/study/{seeded['study_pk']}/change/"):
            response = session(user).get(path)
            assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), (path, user)


CHECKS = {f.__name__: f for f in (home_shows_no_patient, logout_redirects, schema_has_no_data, admin_refuses_non_staff)}


# --- helpers -----------------------------------------------------------------------------------


def session(user) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def client_for(call: Call, user):
    if call.api:
        return api(user if call.logged_in else None)
    return session(user if call.logged_in else None)


def last_seq() -> int:
    return AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0


def committed_since(seq: int) -> list[AuditEvent]:
    """Events after ``seq`` as a second connection sees them: committed rows only."""
    other = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        with other.cursor() as cursor:
            cursor.execute(
                "SELECT seq, event, outcome, actor_id, study_id, patient_id, details FROM audit_auditevent "
                "WHERE seq > %s ORDER BY seq", [seq])
            rows = cursor.fetchall()
    finally:
        other.close()
    ids = [r[0] for r in rows]
    # Read the rows through the ORM for decoded fields (details), but only those seen committed.
    return list(AuditEvent.objects.filter(seq__in=ids).order_by("seq"))


def fill(path: str, seeded: dict) -> str:
    return path.format(**{k: v for k, v in seeded.items() if k != "study"})


def send(call: Call, seeded: dict, user):
    client = client_for(call, user)
    kwargs = BODIES[call.body](seeded) if call.body else {}
    if call.accept:
        kwargs["HTTP_ACCEPT"] = call.accept
    path = fill(call.path, seeded)
    if call.method == "GET":
        return client.get(path, **kwargs)
    if "content_type" in kwargs:  # a raw body (STOW-RS multipart/related, FHIR JSON, HL7 v2 ER7)
        return client.generic(call.method, path, kwargs.pop("data"), content_type=kwargs.pop("content_type"), **kwargs)
    return client.post(path, **kwargs)


def body_of(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def assert_written(call: Call, events: list[AuditEvent], caller, seeded: dict, key: str) -> None:
    study = seeded["study"]
    for w in call.writes:
        actor_id = caller.pk if w.by_caller else None
        matching = [e for e in events if e.event == w.event and e.actor_id == actor_id and e.outcome == w.outcome]
        if w.study == "seeded":
            matching = [e for e in matching if e.study_id == study.pk and e.patient_id == study.patient_id]
        elif w.study == "patient":
            matching = [e for e in matching if e.patient_id == study.patient_id]
        elif w.study == "new":
            matching = [e for e in matching if e.study_id is not None and e.patient_id is not None]
        assert matching, (
            f"{key}: {call.method} {call.path} wrote no committed {w.event} event (actor {actor_id}, outcome "
            f"{w.outcome}, study {w.study}) before its response; committed: "
            f"{[(e.event, e.actor_id, e.outcome, e.study_id) for e in events]}")


# --- the tests ---------------------------------------------------------------------------------

KEYS = sorted(url_patterns())


def test_every_url_declares_its_audit_behaviour():
    patterns = url_patterns()
    missing = sorted(set(patterns) - set(EXPECTATIONS))
    assert not missing, (
        "URL patterns with no audit expectation (add them to EXPECTATIONS in tests/audit/test_completeness.py, "
        "with the event they write or why they return no patient data): "
        + "; ".join(f"{k} ({', '.join(patterns[k])})" for k in missing))
    stale = sorted(set(EXPECTATIONS) - set(patterns))
    assert not stale, f"EXPECTATIONS lists URLs that no longer exist: {stale}"
    for key, expectation in EXPECTATIONS.items():
        if isinstance(expectation, tuple):
            for call in expectation:
                assert call.writes or call.why, f"{key}: a call that writes no event must say why"
                assert call.other_hospital or call.why, f"{key}: say how another hospital fares, or why not"


@pytest.fixture
def users(seeded, request):
    people = {name: request.getfixturevalue(name) for name in ("clinician_a", "clinician_b", "admin_a", "ingest_a", "regulator")}
    people["patient_a"] = seeded["patient_user"]
    return people


@pytest.mark.parametrize("key", KEYS)
def test_url_writes_its_audit_event_before_answering(key, seeded, users, celery_eager):
    expectation = EXPECTATIONS.get(key)
    assert expectation is not None, f"URL pattern {key!r} ({url_patterns()[key]}) declares no audit behaviour"
    if isinstance(expectation, NoPatientData):
        if expectation.check:
            CHECKS[expectation.check](seeded, users)
        return
    for call in expectation:
        caller = users[call.actor] if call.actor else None
        before = last_seq()
        response = send(call, seeded, caller)
        assert response.status_code == call.status, (key, call.path, response.status_code, response.content[:300])
        # Checked before the stream is read: for WADO-RS nothing has been sent yet.
        assert not connection.in_atomic_block
        assert_written(call, committed_since(before), caller, seeded, key)
        content = body_of(response)
        if call.shows:
            assert fill(call.shows, seeded).encode() in content, f"{key}: the answer did not contain the data"


def _other_hospital_keys():
    return [
        (key, n)
        for key, expectation in sorted(EXPECTATIONS.items())
        if isinstance(expectation, tuple)
        for n, call in enumerate(expectation)
        if call.other_hospital
    ]


@pytest.mark.parametrize("key, n", _other_hospital_keys())
def test_another_hospitals_clinician_gets_nothing_and_is_audited(key, n, seeded, users):
    call = EXPECTATIONS[key][n]
    other = users["clinician_b"]
    before = last_seq()
    response = send(call, seeded, other)
    events = committed_since(before)
    content = body_of(response)
    study = seeded["study"]
    asked = fill(call.path, seeded)
    for secret in (PATIENT_ID, PATIENT_NAME, seeded["sop_uid"], "DICM"):
        if secret in asked:
            continue  # a search page repeats what was typed into its form
        assert secret.encode() not in content, f"{key}: hospital B's clinician received {secret!r}"
    if call.other_hospital == "refused":
        assert response.status_code in (403, 404), (key, response.status_code)
        assert any(e.event == Event.ACCESS_DENIED and e.actor_id == other.pk and e.study_id == study.pk
                   and e.patient_id == study.patient_id for e in events), f"{key}: no ACCESS_DENIED event"
    elif call.other_hospital == "forbidden":
        assert response.status_code == 403, (key, response.status_code)
        assert any(e.event == Event.ACCESS_DENIED and e.actor_id == other.pk for e in events), \
            f"{key}: no ACCESS_DENIED event"
    else:
        assert call.other_hospital == "empty"
        assert response.status_code == 200, (key, response.status_code)
        if response["Content-Type"].startswith(QIDO_JSON):
            assert response.json() == []
        queries = [e for e in events if e.event == Event.QUERY and e.actor_id == other.pk]
        assert queries and queries[-1].details["results"] == 0, f"{key}: the empty search was not audited"
