"""Federated search against real archives (two Orthanc over DICOMweb, one over DIMSE only): a
refresh finds what the archives hold now and indexes it once, through the consent policy; an
archive that hangs, answers garbage or refuses connections is reported as such while the others'
results come back — within the archive's timeout plus 200 ms (the issue's fault test)."""

from __future__ import annotations

import dataclasses
import datetime
import http.server
import io
import json
import socket
import threading
import time

import pytest
import requests
from django.test import Client
from django.utils import timezone
from pydicom.uid import generate_uid

from audit.models import AuditEvent, Event
from bench.ingest import free_port
from consent import services as consent_services
from consent.models import Scope
from exchange.federation.search import ArchiveState, PatientNotVisible, federated_search
from exchange.mpi.models import PatientIdentifier
from exchange.studies.models import Availability, Instance, Series, Study
from fixtures.province import study_datasets
from hospitals.models import ArchiveEndpoint, EndpointStatus
from hospitals.services import account_create, endpoint_create, hospital_create
from tests.conftest import PASSWORD, api, make_patient_user
from tests.federation.conftest import CT_SIZE, source_index
from tests.federation.test_onboarding_sync import onboard

pytestmark = pytest.mark.django_db

INDEX_TIME = (2026, 11, 27, 3, 0)  # a hung archive's part of the answer is "index as of" this


# --- archives that misbehave ----------------------------------------------------------------------


class HangingServer:
    """Accepts TCP connections and never answers a byte: an archive that hangs."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            self.conns.append(conn)

    def close(self):
        self._stop.set()
        self.thread.join(timeout=5)
        for conn in self.conns:
            conn.close()
        self.sock.close()


class _Garbage(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        body = b"this is not json {"
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def hanging():
    server = HangingServer()
    yield server
    server.close()


@pytest.fixture
def garbage():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


# --- the province, onboarded -------------------------------------------------------------------------


@dataclasses.dataclass
class Fed:
    hospitals: dict
    endpoints: dict
    patient: object
    local_ids: dict  # hospital code -> the patient's local id there
    specs: dict  # hospital code -> one StudySpec of the patient there
    clinician: object  # at PPH


@pytest.fixture
def fed(archives, province, django_capture_on_commit_callbacks, settings):
    settings.CONSENT_DEFAULT = "opt-in"
    hospitals = {
        "PPH": hospital_create(code="PPH", name="Provincial People's Hospital", authority="PPH-MRN", ae_title="PPH_GW"),
        "CITY1": hospital_create(code="CITY1", name="First City Hospital", authority="CITY1-MRN", ae_title="CITY1_GW"),
        "CNTY": hospital_create(code="CNTY", name="County Hospital", authority="CNTY-MRN", ae_title="CNTY_GW"),
    }
    capture = django_capture_on_commit_callbacks
    endpoints = {
        "PPH": onboard(hospitals["PPH"], archives["PPH"], "dicomweb", capture, auth="basic", username="platform",
                       secret="s3cret-pass")[0],
        "CITY1": onboard(hospitals["CITY1"], archives["CITY1"], "dicomweb", capture)[0],
        "CNTY": onboard(hospitals["CNTY"], archives["CNTY"], "dimse", capture)[0],
    }
    # Someone registered (with an identity card number) at all three hospitals: one enterprise patient.
    by_person: dict[int, dict] = {}
    for spec in province.studies:
        reg = spec.registration
        if reg.ric:
            by_person.setdefault(reg.person_id, {}).setdefault(reg.hospital_code, spec)
    specs = next(s for s in by_person.values() if set(s) == {"PPH", "CITY1", "CNTY"})
    local_ids = {code: spec.registration.local_id for code, spec in specs.items()}
    patients = {PatientIdentifier.objects.get(hospital=hospitals[code], local_id=local_id).patient
                for code, local_id in local_ids.items()}
    assert len(patients) == 1, "the province's person at three hospitals should be one enterprise patient"
    clinician = account_create(username="dr_pph", role="clinician", password=PASSWORD, hospital=hospitals["PPH"])
    return Fed(hospitals, endpoints, patients.pop(), local_ids, specs, clinician)


def consent_network(fed):
    patient_user = make_patient_user(fed.patient, "the_patient")
    consent_services.consent_grant(actor=patient_user, patient=fed.patient, scope=Scope.NETWORK)


def add_study(server, spec, province) -> tuple[str, str]:
    """A new study of the same registration, stored at the archive after the sync: (uid, Orthanc id)."""
    new = dataclasses.replace(spec, study_uid=generate_uid(), accession=f"NEW{time.time_ns() % 10**8}",
                              study_date=datetime.date(2025, 1, 5))
    orthanc_id = ""
    with requests.Session() as s:
        s.auth = server.auth
        for ds in study_datasets(new, seed=province.seed, ct_size=CT_SIZE):
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            r = s.post(server.url + "/instances", data=buf.getvalue(), timeout=30)
            r.raise_for_status()
            orthanc_id = r.json()["ParentStudy"]
    return new.study_uid, orthanc_id


def remove_study(server, orthanc_id):
    requests.delete(f"{server.url}/studies/{orthanc_id}", auth=server.auth, timeout=30).raise_for_status()


def extra_endpoint(fed, code, name, *, kind="dicomweb", port, last_sync=INDEX_TIME, timeout=30):
    fields = ({"qido_url": f"http://127.0.0.1:{port}/dicom-web"} if kind == "dicomweb"
              else {"remote_ae_title": "SLOW_PACS", "host": "127.0.0.1", "port": port})
    endpoint = endpoint_create(hospital=fed.hospitals[code], kind=kind, name=name, timeout=timeout, **fields)
    ArchiveEndpoint.objects.filter(pk=endpoint.pk).update(
        status=EndpointStatus.LIVE, last_sync_at=timezone.make_aware(datetime.datetime(*last_sync)))
    return endpoint


def by_name(result):
    return {(a.hospital_code, a.endpoint): a for a in result.archives}


def audit_text(events) -> str:
    return json.dumps([e.details for e in events], ensure_ascii=False)


# --- tests ----------------------------------------------------------------------------------------


def test_refresh_finds_studies_added_after_the_sync_and_indexes_them_once(fed, archives, province):
    consent_network(fed)  # so PPH's clinician may see the other hospitals' studies
    added = {}
    try:
        for code in ("PPH", "CNTY"):  # DICOMweb with basic auth, and DIMSE (C-FIND)
            added[code] = add_study(archives[code], fed.specs[code], province)
        counts = (Study.objects.count(), Series.objects.count(), Instance.objects.count())

        # given: the index does not know the new studies; without refresh the answer is the index's
        before = federated_search(fed.clinician, fed.patient, refresh=False)
        uids = {s.study_instance_uid for s in before.studies}
        assert uids and not uids & {uid for uid, _ in added.values()}
        assert {a.status for a in before.archives} == {ArchiveState.SKIPPED}
        assert all(a.summary.startswith("not refreshed · index as of ") for a in before.archives)

        # when: refreshed from the live archives
        result = federated_search(fed.clinician, fed.patient, refresh=True, timeout=20)

        # then: every archive answered, live, and the new studies are in the answer and the index
        statuses = by_name(result)
        assert set(statuses) == {("PPH", "PACS"), ("CITY1", "PACS"), ("CNTY", "PACS")}
        for archive in result.archives:
            assert (archive.status, archive.freshness, archive.summary) == ("answered", "live now", "answered · live")
            assert archive.elapsed_ms is not None and archive.studies > 0
        found = {s.study_instance_uid: s for s in result.studies}
        for code, (uid, _) in added.items():
            study = found[uid]
            assert (study.hospital_id, study.availability, study.source_endpoint_id) == (
                fed.hospitals[code].pk, Availability.REMOTE, fed.endpoints[code].pk)
            assert study.patient_id == fed.patient.pk  # through the patient index's matcher
            source = source_index(archives[code])[uid]
            assert {s.series_instance_uid for s in study.series.all()} == set(source)
            assert set(Instance.objects.filter(series__study=study).values_list("sop_instance_uid", flat=True)) == \
                {sop for sops in source.values() for sop in sops}
            assert study.num_instances == sum(len(v) for v in source.values())
            assert result.freshness_of(study) == "live now"
        assert Study.objects.count() == counts[0] + 2
        assert statuses[("PPH", "PACS")].created == statuses[("CNTY", "PACS")].created == 1
        imports = AuditEvent.objects.filter(event=Event.IMPORT, details__action="federated_refresh")
        assert imports.count() == 2

        # when: refreshed again, nothing is duplicated or rewritten
        after = (Study.objects.count(), Series.objects.count(), Instance.objects.count())
        again = federated_search(fed.clinician, fed.patient, refresh=True, timeout=20)
        assert (Study.objects.count(), Series.objects.count(), Instance.objects.count()) == after
        assert {s.study_instance_uid for s in again.studies} == set(found)
        assert all(a.created == a.updated == 0 for a in again.archives)
        assert imports.count() == 2

        # and: one QUERY event per search, naming the patient; archives and statuses, no identifiers
        queries = list(AuditEvent.objects.filter(event=Event.QUERY, details__action="federated_search").order_by("id"))
        assert len(queries) == 3
        assert all(q.patient_id == fed.patient.pk and q.actor_id == fed.clinician.pk and q.purpose == "treatment"
                   for q in queries)
        assert [a["status"] for a in queries[-1].details["archives"]] == ["answered"] * 3
        text = audit_text(queries + list(imports))
        for local_id in fed.local_ids.values():
            assert local_id not in text
        reg = fed.specs["PPH"].registration
        for name in (reg.name_alphabetic.split("^")[0], reg.name_ideographic.split("^")[0]):
            assert not name or name not in text
    finally:
        for code, (_, orthanc_id) in added.items():
            remove_study(archives[code], orthanc_id)


def test_without_consent_another_hospitals_clinician_sees_nothing_of_the_patient(fed, archives):
    # given: a clinician at a hospital where the patient is not registered, no consent (opt-in)
    outsider = account_create(username="dr_out", role="clinician", password=PASSWORD,
                              hospital=hospital_create(code="FAR", name="Far Hospital", authority="FAR-MRN", ae_title="FAR_GW"))
    with pytest.raises(PatientNotVisible):
        federated_search(outsider, fed.patient, refresh=True, timeout=5)
    denied = AuditEvent.objects.filter(event=Event.ACCESS_DENIED, actor=outsider, patient=fed.patient)
    assert denied.count() == 1
    response = api(outsider).get("/api/federation/search", {"patient": f"PPH-MRN|{fed.local_ids['PPH']}", "refresh": "1"})
    assert response.status_code == 404
    assert response.json() == {"detail": "no patient with this identifier that you may see"}
    assert denied.count() == 2

    # given: a clinician at CITY1, where the patient is registered, without consent for the others' studies
    city = account_create(username="dr_city", role="clinician", password=PASSWORD, hospital=fed.hospitals["CITY1"])
    response = api(city).get("/api/federation/search", {"patient": str(fed.patient.enterprise_id), "refresh": "1"})
    assert response.status_code == 200
    body = response.json()
    # then: only CITY1's studies; the statuses name hospitals and endpoint names, nothing of the archives
    uids_at = {code: set(Study.objects.filter(patient=fed.patient, hospital=hospital).values_list("study_instance_uid", flat=True))
               for code, hospital in fed.hospitals.items()}
    own = uids_at["CITY1"]
    assert own and {s["study_instance_uid"] for s in body["studies"]} == own
    content = response.content.decode()
    for code in ("PPH", "CNTY"):
        for uid in uids_at[code]:
            assert uid not in content
        assert fed.local_ids[code] not in content
    for server in archives.values():
        for secret in (str(server.http_port), str(server.dicom_port), server.aet, "127.0.0.1", "platform", "s3cret"):
            assert secret not in content
    counts = {a["hospital_code"]: a["studies"] for a in body["archives"]}
    assert counts == {"PPH": 0, "CITY1": len(own), "CNTY": 0}
    assert {a["status"] for a in body["archives"]} == {"answered"}


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_one_archive_hanging_the_search_returns_within_its_timeout_with_the_others(fed, hanging, kind):
    consent_network(fed)
    slow = extra_endpoint(fed, "PPH", "Old PACS", kind=kind, port=hanging.port)
    timeout = 2.0

    # when: a refresh while one archive accepts the connection and never answers
    started = time.monotonic()
    result = federated_search(fed.clinician, fed.patient, refresh=True, timeout=timeout)
    elapsed = time.monotonic() - started

    # then: back within the timeout plus 200 ms (the one timed assertion)
    assert elapsed < timeout + 0.2, f"federated search took {elapsed:.3f} s with a {timeout} s timeout"
    assert hanging.conns, "the hanging archive was never asked"
    statuses = by_name(result)
    hung = statuses[("PPH", "Old PACS")]
    assert hung.status == ArchiveState.TIMEOUT
    assert hung.summary == "did not answer within 2 s · index as of 2026-11-27 03:00"
    assert hung.as_dict()["freshness"] == "index as of 2026-11-27 03:00"
    for code in ("PPH", "CITY1", "CNTY"):
        assert statuses[(code, "PACS")].status == ArchiveState.ANSWERED
    # with the others' results: every indexed study of the patient, from all three hospitals
    assert {s.study_instance_uid for s in result.studies} == set(
        Study.objects.filter(patient=fed.patient).values_list("study_instance_uid", flat=True))
    assert {s.hospital.code for s in result.studies} == {"PPH", "CITY1", "CNTY"}
    query = AuditEvent.objects.filter(event=Event.QUERY, details__action="federated_search").get()
    assert {(a["endpoint"], a["status"]) for a in query.details["archives"]} >= {(slow.pk, "timeout")}

    # and the next refreshes back off from it (state on its row, shared by every worker): not
    # asked for 30 s, the others are, and the search does not wait for it
    slow.refresh_from_db()
    assert slow.search_failures == 1
    assert 25 < (slow.search_retry_after - timezone.now()).total_seconds() <= 30
    asked = len(hanging.conns)
    started = time.monotonic()
    again = by_name(federated_search(fed.clinician, fed.patient, refresh=True, timeout=timeout))
    assert time.monotonic() - started < timeout / 2 and len(hanging.conns) == asked
    assert again[("PPH", "Old PACS")].status == ArchiveState.SKIPPED
    assert again[("PPH", "Old PACS")].summary.startswith("not asked: it did not answer the last 1 time(s); asked again from")
    assert again[("PPH", "PACS")].status == ArchiveState.ANSWERED
    # once the wait is over it is asked again; a second failure doubles the wait
    ArchiveEndpoint.objects.filter(pk=slow.pk).update(search_retry_after=timezone.now())
    assert by_name(federated_search(fed.clinician, fed.patient, refresh=True, timeout=timeout))[
        ("PPH", "Old PACS")].status == ArchiveState.TIMEOUT
    slow.refresh_from_db()
    assert slow.search_failures == 2 and 55 < (slow.search_retry_after - timezone.now()).total_seconds() <= 60
    # an archive that answers is reset at once (here: the successful sync of it)
    from exchange.federation.services import sync_job_create, sync_job_finish

    sync_job_finish(sync_job_create(endpoint=slow, trigger="operator").pk)
    slow.refresh_from_db()
    assert (slow.search_failures, slow.search_retry_after) == (0, None)


def test_garbage_and_refused_archives_fail_clearly_the_others_answer(fed, garbage):
    consent_network(fed)
    extra_endpoint(fed, "CITY1", "Garbage PACS", port=garbage.server_address[1])
    extra_endpoint(fed, "CNTY", "Down PACS", port=free_port())

    result = federated_search(fed.clinician, fed.patient, refresh=True, timeout=10)

    statuses = by_name(result)
    bad = statuses[("CITY1", "Garbage PACS")]
    assert (bad.status, bad.code, bad.message) == ("failed", "not_dicomweb", "Not a DICOMweb service")
    down = statuses[("CNTY", "Down PACS")]
    assert (down.status, down.code) == ("failed", "refused")
    assert down.summary == "failed: connection refused · index as of 2026-11-27 03:00"
    for code in ("PPH", "CITY1", "CNTY"):
        assert statuses[(code, "PACS")].status == ArchiveState.ANSWERED
    assert {s.hospital.code for s in result.studies} == {"PPH", "CITY1", "CNTY"}
    query = AuditEvent.objects.filter(event=Event.QUERY, details__action="federated_search").get()
    assert query.outcome == "4"  # a partial answer: minor failure


def test_api_answers_studies_and_archive_statuses(fed):
    client = api(fed.clinician)
    response = client.get("/api/federation/search", {"patient": f"PPH-MRN|{fed.local_ids['PPH']}", "refresh": "1"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["patient"] == str(fed.patient.enterprise_id) and body["refreshed"] is True
    own = Study.objects.get(patient=fed.patient, hospital=fed.hospitals["PPH"], study_instance_uid=fed.specs["PPH"].study_uid)
    study = next(s for s in body["studies"] if s["study_instance_uid"] == own.study_instance_uid)
    assert study["patient_id"] == fed.local_ids["PPH"] and study["hospital"]["code"] == "PPH"
    assert study["num_instances"] == own.num_instances and study["freshness"] == "live now"
    assert study["viewer_url"] == f"/studies/{own.pk}/"
    # without consent PPH's clinician sees PPH's studies only; every archive is still listed
    assert {s["hospital"]["code"] for s in body["studies"]} == {"PPH"}
    assert [a["hospital_code"] for a in body["archives"]] == ["CITY1", "CNTY", "PPH"]
    assert all(set(a) >= {"hospital", "endpoint", "status", "message", "studies", "elapsed_ms", "freshness"}
               for a in body["archives"])
    # the same patient by local id and issuer, and by enterprise id, without refresh
    by_issuer = client.get("/api/federation/search", {"patient": fed.local_ids["PPH"], "issuer": "PPH-MRN"}).json()
    assert by_issuer["refreshed"] is False and {a["status"] for a in by_issuer["archives"]} == {"skipped"}
    # bad input: clear 4xx, never a 500
    for params, code in (({}, 400), ({"patient": "nonsense"}, 400), ({"patient": "PPH-MRN|"}, 400),
                         ({"patient": "PPH-MRN|x\x00"}, 400),
                         ({"patient": str(fed.patient.enterprise_id), "refresh": "maybe"}, 400),
                         ({"patient": "00000000-0000-0000-0000-000000000000"}, 404), ({"patient": "PPH-MRN|nobody"}, 404)):
        assert client.get("/api/federation/search", params).status_code == code, params
    assert api().get("/api/federation/search", {"patient": str(fed.patient.enterprise_id)}).status_code == 401


def test_search_page_refreshes_and_shows_each_archive(fed, hanging, settings):
    settings.EXCHANGE_FEDERATED_SEARCH_TIMEOUT = 2.0
    extra_endpoint(fed, "PPH", "<script>alert(1)</script>", port=hanging.port)
    extra_endpoint(fed, "CNTY", "Down PACS", port=free_port())
    fed.hospitals["CITY1"].name = "City <b>One</b>"
    fed.hospitals["CITY1"].save()
    client = Client()
    client.force_login(fed.clinician)

    # a search for one patient offers the refresh, and shows no statuses until asked
    page = client.get("/search/", {"patient_id": fed.local_ids["PPH"]}).content.decode()
    assert "Refresh from hospital archives" in page and "Hospital archives" not in page

    before = AuditEvent.objects.filter(event=Event.QUERY).count()
    page = client.get("/search/", {"patient_id": fed.local_ids["PPH"], "refresh": "1"}).content.decode()
    assert "Hospital archives" in page
    # one action, one QUERY event: the federated search's, carrying the page's query
    events = list(AuditEvent.objects.filter(event=Event.QUERY).order_by("id"))[before:]
    assert len(events) == 1
    assert events[0].details["channel"] == "page" and events[0].details["query"] == {"PatientID": fed.local_ids["PPH"]}
    assert {a["status"] for a in events[0].details["archives"]} >= {"answered", "timeout", "failed"}
    assert "answered · live" in page
    assert "did not answer within 2 s · index as of 2026-11-27 03:00" in page
    assert "failed: connection refused · index as of 2026-11-27 03:00" in page
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "City <b>One</b>" not in page and "City &lt;b&gt;One&lt;/b&gt;" in page
    assert fed.specs["PPH"].registration.local_id in page
    assert "live now" in page  # the PPH study's freshness

    # a search that finds several patients targets none
    page = client.get("/search/", {"from": "1900-01-01"}).content.decode()
    assert page.count("/studies/") > 1
    assert "Refresh from hospital archives" not in page
