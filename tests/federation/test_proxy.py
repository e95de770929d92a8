"""Retrieve proxy and prefetch of priors, against real Orthanc archives (tests/federation/conftest.py
``archives``): WADO-RS on the platform for a federated study fetches from the source archive
(WADO-RS or C-GET), streams while filling a bounded on-disk cache, and serves the second view
from that cache. Byte-identical to the archive's own file (Orthanc REST /instances/{id}/file)."""

from __future__ import annotations

import gc
import http.server
import io
import os
import socketserver
import threading
from pathlib import Path

import pydicom
import pytest
import requests

from audit.models import AuditEvent, Event, Outcome
from exchange.dicomweb.multipart import MultipartError, MultipartReader, parse_content_type
from exchange.federation import cache, proxy
from exchange.federation.tasks import prefetch_priors_task
from exchange.studies.models import Availability, Instance, Series, Study
from hospitals.models import ArchiveEndpoint
from hospitals.services import account_create, endpoint_create, endpoint_sync_start, hospital_create
from bench.ingest import free_port
from tests.conftest import PASSWORD, api

pytestmark = pytest.mark.django_db
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'


# --- helpers --------------------------------------------------------------------------------


@pytest.fixture
def hospitals(db):
    return {
        "PPH": hospital_create(code="PPH", name="Provincial People's Hospital", authority="PPH-MRN", ae_title="PPH_GW"),
        "CITY1": hospital_create(code="CITY1", name="First City Hospital", authority="CITY1-MRN", ae_title="CITY1_GW"),
        "CNTY": hospital_create(code="CNTY", name="County Hospital", authority="CNTY-MRN", ae_title="CNTY_GW"),
    }


@pytest.fixture
def cache_dir(settings, tmp_path):
    settings.EXCHANGE_PROXY_CACHE_DIR = str(tmp_path / "proxy-cache")
    return Path(settings.EXCHANGE_PROXY_CACHE_DIR)


def onboard(hospital, server, capture, kind="dicomweb", **extra) -> ArchiveEndpoint:
    """Add an archive and index it through the admin's service functions (as test_onboarding_sync)."""
    if kind == "dicomweb":
        endpoint = endpoint_create(hospital=hospital, kind="dicomweb", name="PACS", qido_url=server.dicomweb, timeout=10,
                                   **extra)
    else:
        endpoint = endpoint_create(hospital=hospital, kind="dimse", name="PACS", remote_ae_title=server.aet,
                                   host="127.0.0.1", port=server.dicom_port, timeout=10)
    with capture(execute=True):
        job = endpoint_sync_start(endpoint=endpoint)
    job.refresh_from_db()
    assert job.status == "done", (job.message, job.errors)
    return endpoint


def pph(archives, hospitals, capture):
    return onboard(hospitals["PPH"], archives["PPH"], capture, auth="basic", username="platform", secret="s3cret-pass")


def clinician(hospital, name="dr"):
    return account_create(username=f"{name}_{hospital.code.lower()}", role="clinician", password=PASSWORD, hospital=hospital)


def source_file(server, sop_uid: str) -> bytes:
    """The archive's own file for one SOP Instance UID (Orthanc REST API)."""
    s = requests.Session()
    s.auth = server.auth
    found = s.post(server.url + "/tools/lookup", data=sop_uid, timeout=30).json()
    (orthanc_id,) = [f["ID"] for f in found if f["Type"] == "Instance"]
    r = s.get(f"{server.url}/instances/{orthanc_id}/file", timeout=30)
    r.raise_for_status()
    return r.content


def body_of(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def parts_of(response) -> list[bytes]:
    """The parts of a complete multipart/related answer (a missing closing delimiter raises)."""
    _, params = parse_content_type(response["Content-Type"])
    reader = MultipartReader(io.BytesIO(body_of(response)), params["boundary"])
    return [b"".join(p.chunks()) for p in reader.parts()]


def remote_instances(hospital, **filters):
    return list(Instance.objects.filter(series__study__hospital=hospital, **filters)
                .select_related("series__study").order_by("series__study__study_date", "series_id", "instance_number"))


def url_of(instance, suffix="") -> str:
    return (f"/dicomweb/studies/{instance.series.study.study_instance_uid}/series/{instance.series.series_instance_uid}"
            f"/instances/{instance.sop_instance_uid}{suffix}")


def cache_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def dataset_bytes(part10: bytes) -> bytes:
    """The data set after the File Meta Information (which a C-STORE does not carry, PS3.10 §7.1)."""
    ds = pydicom.dcmread(io.BytesIO(part10), stop_before_pixels=True)
    meta_end = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    return part10[meta_end:]


# --- retrieve through the platform ----------------------------------------------------------


def test_instance_series_and_study_are_byte_identical_and_the_second_view_is_cached(
        archives, hospitals, cache_dir, django_capture_on_commit_callbacks):
    endpoint = pph(archives, hospitals, django_capture_on_commit_callbacks)
    client = api(clinician(hospitals["PPH"]))
    instances = remote_instances(hospitals["PPH"])
    assert instances and all(i.storage_key == "" and i.series.study.availability == Availability.REMOTE for i in instances)

    # one instance
    one = instances[0]
    r = client.get(url_of(one), HTTP_ACCEPT=MULTIPART_DICOM)
    assert r.status_code == 200 and r.streaming
    (got,) = parts_of(r)
    assert got == source_file(archives["PPH"], one.sop_instance_uid)
    one.refresh_from_db()
    assert one.transfer_syntax_uid and one.size == len(got) and one.pixel_data_offset  # the row learnt what ingest knows

    # a series, then a whole study (several series)
    study = max({i.series.study for i in instances}, key=lambda s: s.series.count())
    series = study.series.order_by("series_number").first()
    r = client.get(f"/dicomweb/studies/{study.study_instance_uid}/series/{series.series_instance_uid}")
    expected = [source_file(archives["PPH"], i.sop_instance_uid) for i in proxy_order(study, series)]
    assert parts_of(r) == expected
    r = client.get(f"/dicomweb/studies/{study.study_instance_uid}")
    expected = [source_file(archives["PPH"], i.sop_instance_uid) for i in proxy_order(study)]
    assert len(expected) >= len(series.instances.all()) and parts_of(r) == expected
    assert AuditEvent.objects.filter(event=Event.INSTANCES_TRANSFERRED, study=study, outcome=Outcome.SUCCESS).count() == 2

    # second view: from the cache. The archive is made unreachable (its URL now points at a closed
    # port), and the study still comes back whole.
    entries = cache_files(cache_dir)
    assert len([p for p in entries if p.suffix == ".dcm"]) == len({i.sop_instance_uid for i in instances if
                                                                    i.series.study == study} | {one.sop_instance_uid})
    assert not list((cache_dir / "tmp").iterdir())
    dead = f"http://127.0.0.1:{free_port()}/dicom-web"
    ArchiveEndpoint.objects.filter(pk=endpoint.pk).update(qido_url=dead, wado_url=dead)
    r = client.get(f"/dicomweb/studies/{study.study_instance_uid}")
    assert parts_of(r) == expected
    # ...while an instance not yet cached now fails clearly (502, the connector's message).
    other = next(i for i in instances if i.series.study != study and i.sop_instance_uid != one.sop_instance_uid)
    r = client.get(url_of(other))
    assert r.status_code == 502
    assert r.json()["code"] == "refused" and "Connection refused" in r.json()["error"]


def proxy_order(study, series=None):
    qs = Instance.objects.filter(series__study=study)
    if series is not None:
        qs = qs.filter(series=series)
    return list(qs.order_by("series__series_number", "series__id", "instance_number", "id"))


def test_dimse_only_archive_through_c_get(archives, hospitals, cache_dir, monkeypatch,
                                         django_capture_on_commit_callbacks):
    from exchange.federation.connectors.dimse import DimseConnector

    endpoint = onboard(hospitals["CNTY"], archives["CNTY"], django_capture_on_commit_callbacks, kind="dimse")
    client = api(clinician(hospitals["CNTY"]))
    instances = remote_instances(hospitals["CNTY"])
    assert instances
    study = max({i.series for i in instances}, key=lambda s: s.instances.count()).study
    calls = {"instance": 0, "series": 0}
    for kind in calls:
        original = getattr(DimseConnector, f"retrieve_{kind}")

        def counted(self, *args, _kind=kind, _original=original, **kwargs):
            calls[_kind] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(DimseConnector, f"retrieve_{kind}", counted)
    r = client.get(f"/dicomweb/studies/{study.study_instance_uid}")
    assert r.status_code == 200
    got = parts_of(r)
    # one C-GET per series of two or more instances (SERIES level), one per single instance
    sizes = [s.instances.count() for s in study.series.all()]
    assert max(sizes) >= 2 and calls == {"series": sum(n >= 2 for n in sizes), "instance": sum(n < 2 for n in sizes)}
    uid_of = {bytes(pydicom.dcmread(io.BytesIO(p), stop_before_pixels=True).SOPInstanceUID.encode()): p for p in got}
    got = [uid_of[i.sop_instance_uid.encode()] for i in proxy_order(study)]
    expected = [source_file(archives["CNTY"], i.sop_instance_uid) for i in proxy_order(study)]
    assert len(got) == len(expected) == len(uid_of)
    for mine, theirs in zip(got, expected):
        # A C-STORE carries the data set without File Meta (PS3.7 §9.1.1): the meta is rebuilt
        # from the presentation context; the data set itself is the archive's, byte for byte.
        assert dataset_bytes(mine) == dataset_bytes(theirs)
        assert pydicom.dcmread(io.BytesIO(mine)).file_meta.TransferSyntaxUID == \
            pydicom.dcmread(io.BytesIO(theirs)).file_meta.TransferSyntaxUID
    # second view from the cache: the archive's port now points nowhere
    ArchiveEndpoint.objects.filter(pk=endpoint.pk).update(port=free_port())
    r = client.get(f"/dicomweb/studies/{study.study_instance_uid}")
    assert sorted(parts_of(r)) == sorted(got)
    assert not [p for p in cache_files(cache_dir) if p.suffix in (".part", ".get")]


def test_rendered_frames_and_metadata_of_a_remote_instance(archives, hospitals, cache_dir,
                                                           django_capture_on_commit_callbacks):
    onboard(hospitals["CITY1"], archives["CITY1"], django_capture_on_commit_callbacks)
    client = api(clinician(hospitals["CITY1"]))
    ct = [i for i in remote_instances(hospitals["CITY1"]) if i.series.modality == "CT"]
    assert len(ct) >= 3

    # rendered (cold: fetched first, then rendered)
    r = client.get(url_of(ct[0], "/rendered"), HTTP_ACCEPT="image/png")
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
    # frames (cold): the stored bitstream of frame 1, equal to the source's Pixel Data
    r = client.get(url_of(ct[1], "/frames/1"), HTTP_ACCEPT='multipart/related; type="application/octet-stream"')
    assert r.status_code == 200
    source = pydicom.dcmread(io.BytesIO(source_file(archives["CITY1"], ct[1].sop_instance_uid)))
    assert parts_of(r) == [source.PixelData]
    # metadata (cold) of an instance: its header as DICOM JSON, Pixel Data by URI
    r = client.get(url_of(ct[2], "/metadata"))
    assert r.status_code == 200
    (meta,) = r.json()
    assert meta["00080018"]["Value"] == [ct[2].sop_instance_uid]
    assert meta["00100020"]["Value"] == [source.PatientID]
    assert meta["7FE00010"]["BulkDataURI"].endswith("/frames/1")
    assert meta["00083002"]["Value"] == [str(source.file_meta.TransferSyntaxUID)]
    # each view fetched its instance once; all three are now cached and their rows filled in
    assert sum(1 for p in cache_files(cache_dir) if p.suffix == ".dcm") == 3
    for instance in ct[:3]:
        instance.refresh_from_db()
        assert instance.transfer_syntax_uid == str(source.file_meta.TransferSyntaxUID) and instance.size > 0
    assert AuditEvent.objects.filter(event=Event.INSTANCES_ACCESSED, study=ct[0].series.study).count() >= 1


def test_cache_stays_under_its_limit_and_evicts_the_least_recently_used(archives, hospitals, cache_dir, settings,
                                                                        django_capture_on_commit_callbacks):
    endpoint = pph(archives, hospitals, django_capture_on_commit_callbacks)
    client = api(clinician(hospitals["PPH"]))
    series = next(s for s in Series.objects.filter(study__hospital=hospitals["PPH"]) if s.instances.count() >= 4)
    four = remote_instances(hospitals["PPH"], series=series)[:4]
    size = max(len(source_file(archives["PPH"], i.sop_instance_uid)) for i in four)
    settings.EXCHANGE_PROXY_CACHE_BYTES = int(size * 3.5)

    def entry(instance):
        return cache.path_for(cache.key_for(endpoint.pk, instance.sop_instance_uid))

    # given: three instances cached, used long ago in the order 0, 1, 2; then 0 is viewed again
    for i in four[:3]:
        assert len(parts_of(client.get(url_of(i)))) == 1
    for age, i in zip((300, 200, 100), four[:3]):
        os.utime(entry(i), (entry(i).stat().st_atime, entry(i).stat().st_mtime - age))
    # a temporary file left by a worker that crashed an hour ago
    stale = cache_dir / "tmp" / "crashed.part"
    stale.write_bytes(b"half an instance")
    os.utime(stale, (stale.stat().st_atime - 7200, stale.stat().st_mtime - 7200))
    assert parts_of(client.get(url_of(four[0]))) == [entry(four[0]).read_bytes()]

    # when: a fourth instance is filled, past the limit
    assert len(parts_of(client.get(url_of(four[3])))) == 1

    # then: the least recently used (1) is gone, 0 (viewed again), 2 and 3 stay, the total is under the limit
    assert [entry(i).exists() for i in four] == [True, False, True, True]
    total = sum(p.stat().st_size for p in cache_files(cache_dir))
    assert total <= settings.EXCHANGE_PROXY_CACHE_BYTES
    assert cache.usage() == (3, total)
    assert not stale.exists()
    # an evicted instance is simply fetched again
    assert parts_of(client.get(url_of(four[1]))) == [source_file(archives["PPH"], four[1].sop_instance_uid)]


class _LoopbackArchive:
    """A DICOMweb 'archive' answered by a request handler class on a loopback port, in a thread."""

    def _listen(self, handler) -> None:
        self.release = threading.Event()
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", free_port()), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class _FaultyArchive(_LoopbackArchive):
    """``half`` sends the multipart header and half of ``payload``, then closes the connection;
    ``hang`` accepts and never answers."""

    def __init__(self, mode: str, payload: bytes = b""):
        self.mode, self.payload, self.requests = mode, payload, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests += 1
                if outer.mode == "hang":
                    outer.release.wait(30)
                    return
                self.send_response(200)
                self.send_header("Content-Type", 'multipart/related; type="application/dicom"; boundary=cut')
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(b"--cut\r\nContent-Type: application/dicom\r\n\r\n" + outer.payload[: len(outer.payload) // 2])
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self._listen(Handler)


def test_archive_dropping_mid_transfer_or_down_or_hanging_leaves_no_cache_entry(
        archives, hospitals, cache_dir, django_capture_on_commit_callbacks):
    endpoint = onboard(hospitals["CITY1"], archives["CITY1"], django_capture_on_commit_callbacks)
    client = api(clinician(hospitals["CITY1"]))
    instance = remote_instances(hospitals["CITY1"])[0]
    whole = source_file(archives["CITY1"], instance.sop_instance_uid)

    def nothing_cached():
        return [p for p in cache_files(cache_dir) if p.suffix in (".dcm", ".part", ".get")] == []

    # the archive sends half the instance, then drops: headers were sent, so the body is cut short
    # (no closing delimiter) and nothing is cached
    with _FaultyArchive("half", whole) as faulty:
        ArchiveEndpoint.objects.filter(pk=endpoint.pk).update(wado_url=faulty.url)
        r = client.get(url_of(instance))
        assert r.status_code == 200
        body = body_of(r)
        assert faulty.requests == 1
    assert whole[: len(whole) // 4] in body and not body.rstrip().endswith(b"--")
    with pytest.raises(MultipartError):
        parts_of(type("R", (), {"__getitem__": lambda s, k: r[k], "streaming": False, "content": body})())
    assert nothing_cached()
    instance.refresh_from_db()
    assert instance.transfer_syntax_uid == "" and instance.size == 0

    # the archive is down: a clear 502 with the connector's message, nothing cached, failure audited
    dead = f"http://127.0.0.1:{free_port()}/dicom-web"
    ArchiveEndpoint.objects.filter(pk=endpoint.pk).update(wado_url=dead)
    r = client.get(url_of(instance))
    assert r.status_code == 502 and r.json()["code"] == "refused"
    assert client.get(url_of(instance, "/rendered")).status_code == 502
    assert AuditEvent.objects.filter(event=Event.INSTANCES_TRANSFERRED, outcome=Outcome.SERIOUS_FAILURE).exists()

    # the archive accepts and never answers: 504 after the endpoint's timeout
    with _FaultyArchive("hang") as hanging:
        ArchiveEndpoint.objects.filter(pk=endpoint.pk).update(wado_url=hanging.url, timeout=1)
        r = client.get(url_of(instance))
    assert r.status_code == 504 and r.json()["code"] == "timeout"
    assert nothing_cached()

    # the client goes away after the first bytes: the fill is abandoned, nothing is cached
    ArchiveEndpoint.objects.filter(pk=endpoint.pk).update(wado_url=archives["CITY1"].dicomweb, timeout=10)
    r = client.get(url_of(instance))
    assert next(iter(r.streaming_content))
    # The response is dropped unfinished; its stream is closed (the test client's wrapper closes the
    # response without closing the test's database connection, as a WSGI server's close() would).
    del r
    gc.collect()
    assert nothing_cached()
    # and a whole transfer then fills it
    assert parts_of(client.get(url_of(instance))) == [whole]
    assert cache.usage()[0] == 1


class _ScriptedArchive(_LoopbackArchive):
    """Serves given Part 10 files: Retrieve Series answers
    ``series_parts`` in that order (and, with ``drop_after`` = k, only the first k whole, then half
    of the next, then closes); Retrieve Instance answers the file of that SOP Instance UID, or 404.
    Counts the requests of each kind."""

    def __init__(self, files: dict[str, bytes], series_parts: list[bytes], drop_after: int | None = None,
                 series_status: int = 200):
        self.files, self.series_parts, self.drop_after = files, series_parts, drop_after
        self.series_status = series_status
        self.requests = {"series": 0, "instance": 0}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                path = self.path.split("?")[0].rstrip("/").split("/")
                kind = "instance" if "instances" in path else "series"
                outer.requests[kind] += 1
                if kind == "instance":
                    body = outer.files.get(path[-1])
                    if body is None:
                        self.send_response(404)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    parts, cut = [body], None
                else:
                    parts, cut = outer.series_parts, outer.drop_after
                    if outer.series_status != 200:
                        self.send_response(outer.series_status)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                self.send_response(200)
                self.send_header("Content-Type", 'multipart/related; type="application/dicom"; boundary=b0und')
                self.send_header("Connection", "close")
                self.end_headers()
                for n, part in enumerate(parts):
                    self.wfile.write(b"--b0und\r\nContent-Type: application/dicom\r\n\r\n")
                    if cut is not None and n == cut:
                        self.wfile.write(part[: len(part) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    self.wfile.write(part + b"\r\n")
                self.wfile.write(b"--b0und--\r\n")
                self.close_connection = True

            def log_message(self, *args):
                pass

        self._listen(Handler)


def with_other_uid(part10: bytes, uid: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(part10))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_a_cold_series_comes_in_one_request_and_only_the_instances_the_index_knows_are_sent(
        archives, hospitals, cache_dir, django_capture_on_commit_callbacks):
    endpoint = onboard(hospitals["CITY1"], archives["CITY1"], django_capture_on_commit_callbacks)
    client = api(clinician(hospitals["CITY1"]))
    series = next(s for s in Series.objects.filter(study__hospital=hospitals["CITY1"]) if s.instances.count() >= 3)
    first, second, third = remote_instances(hospitals["CITY1"], series=series)[:3]
    files = {i.sop_instance_uid: source_file(archives["CITY1"], i.sop_instance_uid) for i in (first, second, third)}
    stranger = with_other_uid(files[first.sop_instance_uid], "1.2.826.0.1.3680043.10.1.999999")
    url = f"/dicomweb/studies/{series.study.study_instance_uid}/series/{series.series_instance_uid}"

    # the archive's series answer: an instance the index does not know, the third, the first (not
    # the second, which it still serves on its own)
    with _ScriptedArchive(files, [stranger, files[third.sop_instance_uid], files[first.sop_instance_uid]]) as archive:
        ArchiveEndpoint.objects.filter(pk=endpoint.pk).update(wado_url=archive.url)
        got = parts_of(client.get(url))
        assert archive.requests == {"series": 1, "instance": 1}
    assert got == [files[third.sop_instance_uid], files[first.sop_instance_uid], files[second.sop_instance_uid]]
    assert stranger not in got
    entries = [p for p in cache_files(cache_dir) if p.suffix == ".dcm"]
    assert sorted(p.read_bytes() for p in entries) == sorted(files.values())
    for instance in (first, second, third):
        instance.refresh_from_db()
        assert instance.size == len(files[instance.sop_instance_uid]) and instance.transfer_syntax_uid

    # second view: from the cache, no request at all
    with _ScriptedArchive({}, []) as archive:
        ArchiveEndpoint.objects.filter(pk=endpoint.pk).update(wado_url=archive.url)
        assert sorted(parts_of(client.get(url))) == sorted(files.values())
        assert archive.requests == {"series": 0, "instance": 0}

    # the archive drops inside the second part: the client's body is cut short; the first part,
    # whole and verified, stays cached; nothing half-written is left
    cache.clear()
    parts = [files[i.sop_instance_uid] for i in (first, second, third)]
    with _ScriptedArchive(files, parts, drop_after=1) as archive:
        ArchiveEndpoint.objects.filter(pk=endpoint.pk).update(wado_url=archive.url)
        body = body_of(client.get(url))
    assert parts[0] in body and not body.rstrip().endswith(b"--")
    assert [p.read_bytes() for p in cache_files(cache_dir) if p.suffix == ".dcm"] == [parts[0]]
    assert not [p for p in cache_files(cache_dir) if p.suffix == ".part"]

    # an archive (or a gateway in front of it) that refuses series requests: one request per instance
    cache.clear()
    with _ScriptedArchive(files, [], series_status=501) as archive:
        ArchiveEndpoint.objects.filter(pk=endpoint.pk).update(wado_url=archive.url)
        assert sorted(parts_of(client.get(url))) == sorted(files.values())
        assert archive.requests == {"series": 1, "instance": 3}
    cache.clear()
    with _ScriptedArchive(files, []) as archive:  # only the first instance cached again
        ArchiveEndpoint.objects.filter(pk=endpoint.pk).update(wado_url=archive.url)
        assert parts_of(client.get(url_of(first))) == [parts[0]]

    # warming the series (prefetch, metadata) asks once for what is not cached; the cached
    # instance is only touched
    with _ScriptedArchive(files, parts) as archive:
        ArchiveEndpoint.objects.filter(pk=endpoint.pk).update(wado_url=archive.url)
        warmed = proxy.warm(remote_instances(hospitals["CITY1"], series=series)[:3])
        assert archive.requests == {"series": 1, "instance": 0}
    assert (warmed.fetched, warmed.there, warmed.bytes) == (2, 1, len(parts[1]) + len(parts[2]))
    assert sorted(p.read_bytes() for p in cache_files(cache_dir) if p.suffix == ".dcm") == sorted(parts)


def test_a_dimse_archive_that_aborts_mid_series_leaves_only_whole_instances(
        archives, hospitals, cache_dir, django_capture_on_commit_callbacks):
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

    endpoint = onboard(hospitals["CNTY"], archives["CNTY"], django_capture_on_commit_callbacks, kind="dimse")
    client = api(clinician(hospitals["CNTY"]))
    series = max({i.series for i in remote_instances(hospitals["CNTY"])}, key=lambda s: s.instances.count())
    ordered = remote_instances(hospitals["CNTY"], series=series)
    assert len(ordered) >= 3
    files = [source_file(archives["CNTY"], i.sop_instance_uid) for i in ordered]

    def handle_get(event):  # a C-GET SCP that sends the first instance, then aborts
        yield len(files)
        yield 0xFF00, pydicom.dcmread(io.BytesIO(files[0]))
        event.assoc.abort()

    ae = AE(ae_title="CNTY_PACS")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    for context in StoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES, scp_role=True, scu_role=False)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_GET, handle_get)])
    try:
        ArchiveEndpoint.objects.filter(pk=endpoint.pk).update(port=port, timeout=5)
        r = client.get(f"/dicomweb/studies/{series.study.study_instance_uid}/series/{series.series_instance_uid}")
        assert r.status_code == 200
        body = body_of(r)
    finally:
        server.shutdown()
    # the first instance went out whole; then the body ends without its closing delimiter
    assert dataset_bytes(files[0]) in body and not body.rstrip().endswith(b"--")
    entries = [p for p in cache_files(cache_dir) if p.suffix == ".dcm"]
    assert [dataset_bytes(p.read_bytes()) for p in entries] == [dataset_bytes(files[0])]
    assert not [p for p in cache_files(cache_dir) if p.suffix in (".part", ".get")]


def test_consent_applies_before_anything_is_fetched(archives, hospitals, cache_dir, settings, monkeypatch,
                                                    django_capture_on_commit_callbacks):
    settings.CONSENT_DEFAULT = "opt-in"
    pph(archives, hospitals, django_capture_on_commit_callbacks)
    instance = remote_instances(hospitals["PPH"])[0]
    study = instance.series.study

    def no_fetch(*args, **kwargs):
        raise AssertionError("the archive was asked for an instance the caller may not see")

    monkeypatch.setattr(proxy, "_from_source", no_fetch)
    outsider = api(clinician(hospitals["CITY1"], "other"))
    for url in (f"/dicomweb/studies/{study.study_instance_uid}", url_of(instance), url_of(instance, "/metadata"),
                url_of(instance, "/rendered"), url_of(instance, "/frames/1")):
        r = outsider.get(url)
        assert r.status_code == 403, url
        assert b"DICM" not in body_of(r)
    assert AuditEvent.objects.filter(event=Event.ACCESS_DENIED, study=study).count() == 5
    assert not cache_dir.exists() or not [p for p in cache_files(cache_dir) if p.suffix == ".dcm"]


# --- prefetch of priors ---------------------------------------------------------------------


def patient_with_priors(*hospital_list):
    studies = Study.objects.filter(hospital__in=hospital_list, availability=Availability.REMOTE)
    counts: dict[int, int] = {}
    for patient_id in studies.values_list("patient_id", flat=True):
        counts[patient_id] = counts.get(patient_id, 0) + 1
    patient_id = max(counts, key=counts.get)
    assert counts[patient_id] >= 2, "the province should give someone two remote studies"
    return patient_id


def test_prefetch_task_warms_the_cache_once(archives, hospitals, cache_dir, django_capture_on_commit_callbacks):
    pph(archives, hospitals, django_capture_on_commit_callbacks)
    onboard(hospitals["CITY1"], archives["CITY1"], django_capture_on_commit_callbacks)
    patient_id = patient_with_priors(hospitals["PPH"], hospitals["CITY1"])
    priors = list(Study.objects.filter(patient_id=patient_id, availability=Availability.REMOTE)
                  .order_by("-study_date", "-id")[:2])
    wanted = Instance.objects.filter(series__study__in=priors).count()

    first = prefetch_priors_task.delay(patient_id, limit=2, reason="order").get()
    assert first["status"] == "done"
    assert (first["studies"], first["fetched"], first["cached"], first["failed"]) == (2, wanted, 0, 0)
    assert cache.usage()[0] == wanted
    # the cache holds the source's files: the views now answer without the archives
    for study in priors:
        events = AuditEvent.objects.filter(event=Event.INSTANCES_TRANSFERRED, study=study, details__prefetch=True)
        assert events.count() == 1 and events[0].details["instances"] == study.num_instances

    again = prefetch_priors_task.delay(patient_id, limit=2, reason="order").get()
    assert (again["fetched"], again["cached"]) == (0, wanted)
    assert cache.usage()[0] == wanted
    assert AuditEvent.objects.filter(event=Event.INSTANCES_TRANSFERRED, details__prefetch=True).count() == 2

    # a modality window that matches nothing fetches nothing
    assert prefetch_priors_task.delay(patient_id, modalities=["XA"], reason="order").get()["studies"] == 0


def test_prefetch_task_reports_an_unreachable_archive(archives, hospitals, cache_dir, django_capture_on_commit_callbacks):
    endpoint = onboard(hospitals["CITY1"], archives["CITY1"], django_capture_on_commit_callbacks)
    patient_id = Study.objects.filter(hospital=hospitals["CITY1"]).values_list("patient_id", flat=True).first()
    dead = f"http://127.0.0.1:{free_port()}/dicom-web"
    ArchiveEndpoint.objects.filter(pk=endpoint.pk).update(wado_url=dead)
    # eager here: no retry, a clear failure (with a broker it retries with backoff, like sync_endpoint_task)
    assert prefetch_priors_task.delay(patient_id).get() == {"status": "failed", "code": "refused"}
    assert cache.usage()[0] == 0


def test_prefetch_api_is_for_the_ordering_hospital(archives, hospitals, cache_dir, django_capture_on_commit_callbacks):
    from exchange.mpi.models import PatientIdentifier
    from tests.conftest import make_patient_user

    pph(archives, hospitals, django_capture_on_commit_callbacks)
    ident = PatientIdentifier.objects.filter(hospital=hospitals["PPH"], patient__studies__hospital=hospitals["PPH"]).first()
    order = {"patient": {"identifier": ident.local_id}, "modalities": ["CT", "MR", "CR", "DX"], "reason": "order"}

    def post(user, body=order):
        with django_capture_on_commit_callbacks(execute=True):
            return api(user).post("/api/federation/prefetch", body, format="json")

    gateway = account_create(username="gw_pph", role="ingest", password=PASSWORD, hospital=hospitals["PPH"])
    r = post(gateway)
    assert r.status_code == 202 and r.json() == {"status": "queued"}
    assert cache.usage()[0] > 0  # the task ran (eager here) and warmed the cache
    assert AuditEvent.objects.filter(event=Event.INSTANCES_TRANSFERRED, actor=gateway, patient=ident.patient,
                                     details__prefetch="requested").exists()
    assert post(clinician(hospitals["PPH"])).status_code == 202

    assert api().post("/api/federation/prefetch", order, format="json").status_code == 401
    admin = account_create(username="admin_pph", role="hospital_admin", password=PASSWORD, hospital=hospitals["PPH"])
    regulator = account_create(username="reg", role="regulator", password=PASSWORD)
    patient = make_patient_user(ident.patient, username="pat")
    for user in (admin, regulator, patient):
        assert post(user).status_code == 403
    # another hospital naming PPH's patient: refused and audited; by its own (unknown) id: 404
    other = clinician(hospitals["CITY1"], "other")
    assert post(other, {**order, "patient": {"identifier": ident.local_id, "hospital": "PPH"}}).status_code == 403
    assert AuditEvent.objects.filter(event=Event.ACCESS_DENIED, actor=other).exists()
    assert post(other).status_code == 404
    assert post(gateway, {**order, "patient": {"identifier": ident.local_id, "issuer": "CITY1-MRN"}}).status_code == 403
    # malformed: 400, never a 500
    for bad in ({}, {"patient": {}}, {**order, "reason": "whim"}, {**order, "modalities": ["C T"]}, {**order, "limit": 0}):
        assert post(gateway, bad).status_code == 400, bad


def test_prefetch_priors_command(archives, hospitals, cache_dir, django_capture_on_commit_callbacks):
    from django.core.management import CommandError, call_command

    from exchange.mpi.models import PatientIdentifier

    onboard(hospitals["CITY1"], archives["CITY1"], django_capture_on_commit_callbacks)
    ident = PatientIdentifier.objects.filter(hospital=hospitals["CITY1"], patient__studies__hospital=hospitals["CITY1"]).first()
    out = io.StringIO()
    call_command("prefetch_priors", "CITY1", ident.local_id, "--limit", "1", stdout=out)
    fetched = cache.usage()[0]
    assert fetched > 0 and f"{fetched} instances fetched" in out.getvalue()
    assert ident.local_id not in out.getvalue()
    out = io.StringIO()
    call_command("prefetch_priors", "CITY1", ident.local_id, "--limit", "1", stdout=out)
    assert "0 instances fetched" in out.getvalue() and f"{fetched} already cached" in out.getvalue()
    with pytest.raises(CommandError):
        call_command("prefetch_priors", "CITY1", "no-such-id")
    with pytest.raises(CommandError):
        call_command("prefetch_priors", "CITY1", ident.local_id, "--since", "yesterday")


def test_a_share_link_to_a_remote_study_shows_its_images(archives, hospitals, cache_dir, settings,
                                                         django_capture_on_commit_callbacks):
    """A patient shares a study that lives in a hospital's archive: the image comes through the proxy."""
    from django.test import Client

    from consent import services
    from tests.conftest import make_patient_user

    endpoint = onboard(hospitals["CITY1"], archives["CITY1"], django_capture_on_commit_callbacks)
    instance = next(i for i in remote_instances(hospitals["CITY1"]) if i.series.modality == "CT")
    study = instance.series.study
    owner = make_patient_user(study.patient, username="share_owner")
    _, token = services.share_link_create(actor=owner, study=study)

    image = Client().get(f"/s/{token}/img/{instance.pk}/")
    assert image.status_code == 200 and image.content.startswith(b"\xff\xd8")  # a JPEG
    assert proxy.is_cached(instance)

    # Not cached and the archive gone: a clear 502, not an error page.
    cache.clear()
    endpoint.qido_url = endpoint.wado_url = f"http://127.0.0.1:{free_port()}/dicom-web"
    endpoint.save()
    failed = Client().get(f"/s/{token}/img/{instance.pk}/")
    assert failed.status_code == 502 and b"did not deliver" in failed.content


def test_an_indexed_remote_instance_pushed_later_is_stored_and_served_locally(archives, hospitals, cache_dir,
                                                                              django_capture_on_commit_callbacks):
    """Sync indexed it (no file); then the hospital pushes it (STOW here; C-STORE takes the same path):
    the row gets its file instead of a 'different content' refusal, and no archive is needed to view it."""
    from tests.dicom import multipart

    endpoint = onboard(hospitals["CITY1"], archives["CITY1"], django_capture_on_commit_callbacks)
    instance = next(i for i in remote_instances(hospitals["CITY1"]) if i.series.modality == "CT")
    study = instance.series.study
    counts = (study.num_series, study.num_instances)
    data = source_file(archives["CITY1"], instance.sop_instance_uid)
    gateway = account_create(username="gw_city1", role="ingest", password=PASSWORD, hospital=hospitals["CITY1"])
    body, ctype = multipart([data])
    stored = api(gateway).generic("POST", "/dicomweb/studies", body, content_type=ctype)
    assert stored.status_code == 200, stored.content
    assert "FailedSOPSequence" not in stored.json()

    instance.refresh_from_db()
    study.refresh_from_db()
    assert instance.storage_key and instance.size == len(data)
    assert (study.num_series, study.num_instances) == counts  # the same instance, not a second one
    assert AuditEvent.objects.filter(event=Event.INSTANCES_STORED, study=study).exists()
    # Served from the platform's own store: the archive is not asked.
    endpoint.qido_url = endpoint.wado_url = f"http://127.0.0.1:{free_port()}/dicom-web"
    endpoint.save()
    client = api(clinician(hospitals["CITY1"]))
    retrieved = client.get(url_of(instance), HTTP_ACCEPT=MULTIPART_DICOM)
    assert retrieved.status_code == 200
    assert dataset_bytes(parts_of(retrieved)[0]) == dataset_bytes(data)
    assert not proxy.is_cached(instance)
    # Pushing it again is an idempotent duplicate.
    again = api(gateway).generic("POST", "/dicomweb/studies", body, content_type=ctype)
    assert again.status_code == 200 and "FailedSOPSequence" not in again.json()
