"""C-MOVE retrieve (PS3.4 C.4.2) against a real Orthanc reached over DIMSE only: a DIMSE endpoint
whose retrieve method is C-MOVE is onboarded and synced; WADO-RS on the platform then moves a
remote instance (and a whole series) to the platform's own SCP, started in-process on a free
port, which stores it through the ingest into the synced index row. The bytes served are the
archive's data set; the second view needs no archive. An SCP that is not running, an archive
that says "done" without sending, and an archive that does not know the platform: a clear 502,
nothing half-written."""

from __future__ import annotations

import io
import shutil
import threading
import time
from pathlib import Path

import pydicom
import pytest
import requests
from django.test import Client
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from audit.models import AuditEvent, Event, Outcome
from bench.ingest import free_port
from exchange.federation import cache, proxy
from exchange.federation.connectors import ConnectorError
from exchange.federation.connectors.move import final_result
from exchange.federation.prefetch import prefetch_study
from exchange.federation.scp import DicomScp, identify_peer
from exchange.studies.models import Availability, Instance
from hospitals.models import RetrieveMethod
from hospitals.services import account_create, endpoint_create, endpoint_sync_start, endpoint_test, hospital_create
from tests.conftest import PASSWORD, api
from tests.federation.conftest import need_orthanc
from tests.federation.orthanc import OrthancServer

pytestmark = pytest.mark.django_db(transaction=True)  # the SCP's threads use their own connections

PLATFORM_AE = "EXCHANGE"
ARCHIVE_AE = "CNTY_MOVE"
HOSPITAL_AE = "CNTY_GW"  # the platform's calling AE title towards this hospital's archive
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'


# --- the archive and the platform's SCP -----------------------------------------------------


@pytest.fixture(scope="module")
def scp_port() -> int:
    """Fixed for the module: the archive is told this port at start, as a PACS admin would be."""
    return free_port()


@pytest.fixture(scope="module")
def archive(study_files, scp_port, tmp_path_factory):
    """CNTY's studies in an Orthanc that knows the platform as a DICOM node (move destination)
    and the platform's calling AE title as allowed to C-MOVE."""
    need_orthanc()
    root = tmp_path_factory.mktemp("orthanc-move")
    server = OrthancServer(root, aet=ARCHIVE_AE, modalities={
        "exchange": (PLATFORM_AE, "127.0.0.1", scp_port),
        "exchange-scu": (HOSPITAL_AE, "127.0.0.1", scp_port),
    })
    try:
        server.start()
        server.upload(study_files["CNTY"])
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def platform(settings, scp_port):
    settings.EXCHANGE_SCP_AE_TITLE = PLATFORM_AE
    settings.EXCHANGE_SCP_HOST = "127.0.0.1"
    settings.EXCHANGE_SCP_PORT = scp_port
    return settings


@pytest.fixture
def cache_dir(settings, tmp_path):
    settings.EXCHANGE_PROXY_CACHE_DIR = str(tmp_path / "proxy-cache")
    return Path(settings.EXCHANGE_PROXY_CACHE_DIR)


@pytest.fixture
def scp(platform, scp_port):
    lines: list[str] = []
    server = DicomScp(ae_title=PLATFORM_AE, host="127.0.0.1", port=scp_port, timeout=10, report=lines.append)
    server.start()
    server.lines = lines
    yield server
    server.stop(grace=5)


@pytest.fixture
def cnty(db):
    return hospital_create(code="CNTY", name="County Hospital", authority="CNTY-MRN", ae_title=HOSPITAL_AE)


def onboard(hospital, server, capture, timeout: int = 10):
    """Add the archive with retrieve method C-MOVE, test it and index it, as an admin does."""
    endpoint = endpoint_create(hospital=hospital, kind="dimse", name="PACS", remote_ae_title=server.aet,
                               host="127.0.0.1", port=server.dicom_port, timeout=timeout,
                               retrieve_method=RetrieveMethod.C_MOVE)
    assert endpoint_test(endpoint).ok
    with capture(execute=True):
        job = endpoint_sync_start(endpoint=endpoint)
    job.refresh_from_db()
    assert job.status == "done", (job.message, job.errors)
    endpoint.refresh_from_db()
    return endpoint


def clinician(hospital):
    return account_create(username=f"dr_{hospital.code.lower()}", role="clinician", password=PASSWORD, hospital=hospital)


def remote_instances(hospital):
    return list(Instance.objects.filter(series__study__hospital=hospital).select_related("series__study")
                .order_by("series__study__study_date", "series_id", "instance_number"))


def url_of(instance, suffix="") -> str:
    return (f"/dicomweb/studies/{instance.series.study.study_instance_uid}/series/{instance.series.series_instance_uid}"
            f"/instances/{instance.sop_instance_uid}{suffix}")


def source_file(server, sop_uid: str) -> bytes:
    found = requests.post(server.url + "/tools/lookup", data=sop_uid, timeout=30).json()
    (orthanc_id,) = [f["ID"] for f in found if f["Type"] == "Instance"]
    r = requests.get(f"{server.url}/instances/{orthanc_id}/file", timeout=30)
    r.raise_for_status()
    return r.content


def parts_of(response) -> list[bytes]:
    from exchange.dicomweb.multipart import MultipartReader, parse_content_type

    body = b"".join(response.streaming_content) if response.streaming else response.content
    _, params = parse_content_type(response["Content-Type"])
    return [b"".join(p.chunks()) for p in MultipartReader(io.BytesIO(body), params["boundary"]).parts()]


def dataset_bytes(part10: bytes) -> bytes:
    """The data set after the File Meta Information: a C-STORE carries no meta (PS3.10 §7.1), and
    the platform's store zeroes the preamble."""
    ds = pydicom.dcmread(io.BytesIO(part10), stop_before_pixels=True)
    return part10[132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength):]


def stored_files(settings) -> list[Path]:
    root = Path(settings.EXCHANGE_STORAGE_DIR)
    return sorted(p for p in root.rglob("*.dcm") if "proxy-cache" not in p.parts) if root.exists() else []


# --- retrieve by C-MOVE ---------------------------------------------------------------------


def test_instance_and_series_are_moved_to_the_platform_and_served_from_its_storage(
        archive, cnty, scp, cache_dir, settings, django_capture_on_commit_callbacks):
    endpoint = onboard(cnty, archive, django_capture_on_commit_callbacks)
    # The archive calls the SCP with its own AE title: registered as this hospital's DIMSE endpoint.
    assert identify_peer(ARCHIVE_AE, "127.0.0.1").hospital == cnty
    client = api(clinician(cnty))
    instances = remote_instances(cnty)
    assert instances and all(not i.storage_key and i.series.study.availability == Availability.REMOTE for i in instances)
    rows_before = Instance.objects.count()
    series = max({i.series for i in instances}, key=lambda s: s.instances.count())
    in_series = [i for i in instances if i.series == series]
    assert len(in_series) >= 2
    study = series.study
    counts = (study.num_series, study.num_instances)

    # one instance: moved, stored by the SCP into the synced row, served from the platform's storage
    one = in_series[0]
    r = client.get(url_of(one), HTTP_ACCEPT=MULTIPART_DICOM)
    assert r.status_code == 200
    (got,) = parts_of(r)
    source = source_file(archive, one.sop_instance_uid)
    assert dataset_bytes(got) == dataset_bytes(source)
    assert pydicom.dcmread(io.BytesIO(got)).file_meta.TransferSyntaxUID == \
        pydicom.dcmread(io.BytesIO(source)).file_meta.TransferSyntaxUID
    one.refresh_from_db()
    assert one.storage_key and one.size == len(got) and one.transfer_syntax_uid
    assert not proxy.is_remote(one) and not proxy.is_cached(one)  # in storage, not in the bounded cache
    stored = AuditEvent.objects.filter(event=Event.INSTANCES_STORED, study=study, outcome=Outcome.SUCCESS)
    assert stored.filter(actor__username="dimse-cnty").exists()  # the archive acted as CNTY's DIMSE account
    assert any(f"{ARCHIVE_AE}@127.0.0.1 [CNTY]" in line for line in scp.lines)

    # the whole series: the first instance from storage, the others by one C-MOVE of the series
    # (one association from the archive for all of them)
    associations = len(scp.lines)
    r = client.get(f"/dicomweb/studies/{study.study_instance_uid}/series/{series.series_instance_uid}")
    assert r.status_code == 200
    ordered = list(series.instances.order_by("instance_number", "id"))
    got = parts_of(r)
    assert dataset_bytes(got[0]) == dataset_bytes(source)
    assert sorted(dataset_bytes(p) for p in got) == sorted(dataset_bytes(source_file(archive, i.sop_instance_uid))
                                                          for i in ordered)
    deadline = time.monotonic() + 5  # the summary line is written when the archive releases
    while len(scp.lines) == associations and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len([line for line in scp.lines[associations:] if ARCHIVE_AE in line]) == 1
    assert all(i.storage_key for i in series.instances.all())
    # adopted into the synced rows: no second instance, the study's counts unchanged
    assert Instance.objects.count() == rows_before
    study.refresh_from_db()
    assert (study.num_series, study.num_instances) == counts
    assert cache.usage()[0] == 0

    # a rendered view of an instance not yet moved goes through the same path (instance_path)
    other = next(i for i in instances if i.series != series)
    r = client.get(url_of(other, "/rendered"), HTTP_ACCEPT="image/png")
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
    other.refresh_from_db()
    assert other.storage_key

    # second view with the archive stopped: from the platform's storage
    archive.stop()
    try:
        r = client.get(f"/dicomweb/studies/{study.study_instance_uid}/series/{series.series_instance_uid}")
        assert r.status_code == 200 and parts_of(r) == got
    finally:
        archive.start()


def test_prefetch_moves_a_study_once(archive, cnty, scp, cache_dir, django_capture_on_commit_callbacks):
    onboard(cnty, archive, django_capture_on_commit_callbacks)
    study = remote_instances(cnty)[-1].series.study
    first = prefetch_study(study, reason="order")
    assert (first.fetched, first.cached, first.failed) == (study.num_instances, 0, 0)
    assert all(i.storage_key for i in Instance.objects.filter(series__study=study))
    again = prefetch_study(study, reason="order")
    assert (again.fetched, again.cached) == (0, study.num_instances)


def nothing_written(settings, cache_dir, instance) -> bool:
    instance.refresh_from_db()
    return (instance.storage_key == "" and instance.size == 0 and instance.transfer_syntax_uid == ""
            and stored_files(settings) == []
            and not [p for p in cache_dir.rglob("*") if p.is_file() and not p.name.startswith(".")])


def test_scp_not_running_gives_a_clear_502_within_the_timeout(archive, cnty, platform, cache_dir, settings,
                                                              django_capture_on_commit_callbacks):
    endpoint = onboard(cnty, archive, django_capture_on_commit_callbacks, timeout=5)
    client = api(clinician(cnty))
    instance = remote_instances(cnty)[0]
    rows = Instance.objects.count()

    started = time.monotonic()
    r = client.get(url_of(instance))
    elapsed = time.monotonic() - started

    assert r.status_code == 502, r.content
    body = r.json()
    assert body["code"] == "not_delivered", body
    for needed in (f"'{PLATFORM_AE}'", f"127.0.0.1:{settings.EXCHANGE_SCP_PORT}", "dicom_scp"):
        assert needed in body["error"]
    assert elapsed < endpoint.timeout + 5  # the fault rule: a clear status within the timeout
    assert nothing_written(settings, cache_dir, instance) and Instance.objects.count() == rows
    assert AuditEvent.objects.filter(event=Event.INSTANCES_TRANSFERRED, outcome=Outcome.SERIOUS_FAILURE).exists()
    assert client.get(url_of(instance, "/rendered")).status_code == 502


class _SwallowingScp:
    """A DICOM node with the platform's AE title that answers every C-STORE with success and keeps
    nothing: an archive's move "succeeds" but the instance never reaches the platform."""

    def __init__(self, port: int):
        self.ae = AE(ae_title=PLATFORM_AE)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.port, self.received = port, threading.Event()

    def _store(self, event):
        self.received.set()
        return 0x0000

    def __enter__(self):
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._store)])
        return self

    def __exit__(self, *exc):
        self.server.shutdown()


def test_a_move_reported_done_but_never_arriving_fails_after_the_timeout(archive, cnty, platform, cache_dir, settings,
                                                                         scp_port, django_capture_on_commit_callbacks):
    onboard(cnty, archive, django_capture_on_commit_callbacks, timeout=2)
    client = api(clinician(cnty))
    instance = remote_instances(cnty)[0]
    with _SwallowingScp(scp_port) as elsewhere:
        r = client.get(url_of(instance))
    assert elsewhere.received.is_set()
    assert r.status_code == 502 and r.json()["code"] == "not_delivered"
    assert "did not arrive at the platform within 2 s" in r.json()["error"] and "dicom_scp" in r.json()["error"]
    assert nothing_written(settings, cache_dir, instance)


def series_url(series) -> str:
    return f"/dicomweb/studies/{series.study.study_instance_uid}/series/{series.series_instance_uid}"


def test_a_series_move_that_cannot_reach_or_never_arrives_fails_clearly(archive, cnty, platform, cache_dir, settings,
                                                                         scp_port, django_capture_on_commit_callbacks):
    endpoint = onboard(cnty, archive, django_capture_on_commit_callbacks, timeout=2)
    client = api(clinician(cnty))
    series = max({i.series for i in remote_instances(cnty)}, key=lambda s: s.instances.count())
    assert series.instances.count() >= 2

    # nothing listens at the move destination: the series move fails, 502 within the timeout
    started = time.monotonic()
    r = client.get(series_url(series))
    assert r.status_code == 502 and r.json()["code"] == "not_delivered", r.content
    assert time.monotonic() - started < endpoint.timeout + 5
    # the archive "sends" the series to a node that keeps nothing: 502 once the timeout has passed
    with _SwallowingScp(scp_port) as elsewhere:
        r = client.get(series_url(series))
    assert elsewhere.received.is_set()
    assert r.status_code == 502 and "no instance arrived at the platform within 2 s" in r.json()["error"]
    for instance in series.instances.all():
        assert nothing_written(settings, cache_dir, instance)


def test_an_archive_that_does_not_know_the_platform_says_so(archive, cnty, platform, cache_dir, settings,
                                                            django_capture_on_commit_callbacks):
    onboard(cnty, archive, django_capture_on_commit_callbacks)
    settings.EXCHANGE_SCP_AE_TITLE = "NOT_REGISTERED"
    instance = remote_instances(cnty)[0]
    r = api(clinician(cnty)).get(url_of(instance))
    # Orthanc answers an unknown move destination with 0xC000, not the 0xA801 PS3.4 names
    assert r.status_code == 502 and r.json()["code"] == "not_delivered"
    assert "0xC000" in r.json()["error"] and "'NOT_REGISTERED'" in r.json()["error"]
    assert nothing_written(settings, cache_dir, instance)


def _final(status: int, completed=None, failed=None, warning=None) -> Dataset:
    ds = Dataset()
    ds.Status = status
    for keyword, value in (("NumberOfCompletedSuboperations", completed), ("NumberOfFailedSuboperations", failed),
                           ("NumberOfWarningSuboperations", warning)):
        if value is not None:
            setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize("status, counts, code, says", [
    (0xA701, (), "protocol", "out of resources"),
    (0xA702, (0, 1, 0), "not_delivered", "0xA702"),
    (0xA801, (), "config", "does not know the move destination 'EXCHANGE'"),
    (0xA900, (), "protocol", "0xA900"),
    (0xC000, (0, 0, 0), "not_delivered", "open an association to the platform"),
    (0xC123, (), "not_delivered", "0xC123"),
    (0xB000, (0, 1, 0), "not_delivered", "0xB000, 1 failed"),
    (0xFE00, (), "protocol", "cancelled"),
    (0x0000, (0, 0, 0), "not_found", "matched nothing"),
    (0x0000, (0, 1, 0), "not_delivered", "1 failed"),
    (0x0122, (), "protocol", "0x0122"),
])
def test_each_final_c_move_status_is_a_clear_error(platform, status, counts, code, says):
    with pytest.raises(ConnectorError) as raised:
        final_result(_final(status, *counts))
    assert raised.value.code == code and says in raised.value.message
    if code == "not_delivered":
        assert "dicom_scp" in raised.value.message and f"127.0.0.1:{platform.EXCHANGE_SCP_PORT}" in raised.value.message


def test_successful_final_c_move_statuses():
    assert final_result(_final(0x0000, 1, 0, 0)).completed == 1
    assert final_result(_final(0x0000)).completed is None  # counts left out: the proxy looks in the index
    assert final_result(_final(0xB000, 1, 0, 1)).warning == 1


# --- what the hospital admin is told ---------------------------------------------------------


def test_endpoint_page_tells_the_admin_the_platform_node_for_c_move(cnty, platform, settings):
    settings.EXCHANGE_SCP_PUBLIC_HOST = "dicom.exchange.example"
    move = endpoint_create(hospital=cnty, kind="dimse", name="PACS move", remote_ae_title=ARCHIVE_AE, host="10.1.2.3",
                           port=104, retrieve_method=RetrieveMethod.C_MOVE)
    get = endpoint_create(hospital=cnty, kind="dimse", name="PACS get", remote_ae_title="CNTY_GET", host="10.1.2.4",
                          port=104)
    admin = account_create(username="admin_cnty", role="hospital_admin", password=PASSWORD, hospital=cnty)
    client = Client()
    client.force_login(admin)

    page = client.get(f"/hospital/archives/{move.pk}/").content.decode()
    assert 'id="platform-scp"' in page and "C-MOVE" in page
    for shown in (f"<b>{PLATFORM_AE}</b>", "<b>dicom.exchange.example</b>", f"<b>{settings.EXCHANGE_SCP_PORT}</b>",
                  f"<b>{ARCHIVE_AE}</b> at 10.1.2.3"):
        assert shown in page
    assert 'id="platform-scp"' not in client.get(f"/hospital/archives/{get.pk}/").content.decode()
