"""The platform's DIMSE SCP (exchange/federation/scp.py) driven by dcmtk's real echoscu, storescu
and findscu: calling AE titles per hospital, C-STORE through the ingest into the right hospital
(stored data set identical to the one sent, audited, idempotent, malformed ones refused with
nothing left behind), C-FIND answering only what the calling hospital may see, and the command's
output free of patient data."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pydicom
import pytest
from django.core.management import call_command
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind, Verification

from audit.models import AuditEvent, Event, Outcome
from bench.ingest import free_port
from exchange.federation.scp import DicomScp, identify_peer
from exchange.studies import storage
from exchange.studies.models import IngestBatch, IngestSource, Instance, Study
from hospitals.models import EndpointStatus
from hospitals.services import endpoint_create, endpoint_go_live
from tests.conftest import require
from tests.dicom import ct_dataset, stored_files, tmp_leftovers

pytestmark = pytest.mark.django_db(transaction=True)

SCP_AE = "EXCHANGE"
PUSH_AE = "PPH_CT1"
# Synthetic patient data that must never appear in logs or the command's output.
SECRET_NAME = "Zhuge^Kongming=诸葛^孔明"
SECRET_ID = "PID-SECRET-4711"


def dcmtk(tool: str) -> str | None:
    """dcmtk's tool, not pynetdicom's console scripts of the same names in the venv's bin."""
    venv_bin = os.path.realpath(os.path.join(sys.prefix, "bin"))
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if os.path.realpath(p) != venv_bin)
    return shutil.which(tool, path=path)


def need_dcmtk() -> None:
    require("dcmtk", dcmtk("storescu") is not None and dcmtk("findscu") is not None, "apt-get install dcmtk")


@pytest.fixture
def push_endpoint(hospital_a):
    """PPH pushes from a modality whose AE title is registered on a live push endpoint."""
    endpoint = endpoint_create(hospital=hospital_a, kind="push", name="CT room 1", remote_ae_title=PUSH_AE, host="127.0.0.1")
    return endpoint_go_live(endpoint=endpoint)


@pytest.fixture
def scp(push_endpoint, hospital_b):
    need_dcmtk()
    lines: list[str] = []
    server = DicomScp(ae_title=SCP_AE, host="127.0.0.1", port=0, timeout=10, report=lines.append)
    server.start()
    server.lines = lines
    yield server
    server.stop(grace=5)


def run(tool: str, *args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([dcmtk(tool) or tool, *args], capture_output=True, text=True, timeout=timeout)


def echoscu(port: int, calling: str, called: str = SCP_AE) -> subprocess.CompletedProcess:
    return run("echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(port))


def storescu(port: int, calling: str, *files: Path) -> subprocess.CompletedProcess:
    return run("storescu", "-aet", calling, "-aec", SCP_AE, "127.0.0.1", str(port), *map(str, files))


def findscu(port: int, calling: str, out: Path, *keys: str, patient_root: bool = False) -> list[pydicom.Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    args = ["findscu", "-P" if patient_root else "-S", "-aet", calling, "-aec", SCP_AE, "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    done = run(*args, "127.0.0.1", str(port))
    assert done.returncode == 0, done.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def write_ct(folder: Path, n: int = 3, **kw) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = kw.pop("study_uid", generate_uid()), kw.pop("series_uid", generate_uid())
    paths = []
    for i in range(1, n + 1):
        ds = ct_dataset(study_uid=study_uid, series_uid=series_uid, instance_number=i, **kw)
        path = folder / f"ct{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def wait_idle(server: DicomScp, timeout: float = 10) -> None:
    """The SCP writes its end-of-association line after the SCU has already exited."""
    deadline = time.monotonic() + timeout
    while server.ae.active_associations and time.monotonic() < deadline:
        time.sleep(0.02)


def same_dataset(stored: Path, sent: Path) -> None:
    a, b = pydicom.dcmread(stored), pydicom.dcmread(sent)
    assert a.file_meta.TransferSyntaxUID == b.file_meta.TransferSyntaxUID
    assert a.preamble == b"\0" * 128
    assert [(e.tag, e.VR, e.value) for e in a] == [(e.tag, e.VR, e.value) for e in b]
    assert a.PixelData == b.PixelData


# --- Association acceptance ---------------------------------------------------------------------


def test_echo_from_registered_push_ae_and_hospital_ae(scp):
    assert echoscu(scp.port, PUSH_AE).returncode == 0
    # CITY1 has no endpoint: its own registered AE title identifies it.
    assert echoscu(scp.port, "CITY1_PACS").returncode == 0
    wait_idle(scp)
    assert any(line.startswith(f"association {PUSH_AE}@127.0.0.1 [PPH]: released, C-ECHO 1") for line in scp.lines)
    assert any(line.startswith("association CITY1_PACS@127.0.0.1 [CITY1]: released, C-ECHO 1") for line in scp.lines)


def _associate(port: int, calling: str, called: str = SCP_AE):
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    return ae.associate("127.0.0.1", port, ae_title=called)


def test_unknown_calling_ae_is_rejected_permanently(scp, hospital_a):
    done = echoscu(scp.port, "STRANGER")
    assert done.returncode != 0
    assert "Calling AE Title Not Recognized" in done.stderr + done.stdout
    assoc = _associate(scp.port, "STRANGER")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (1, 1, 3)
    # A draft endpoint's AE title is not accepted yet.
    endpoint_create(hospital=hospital_a, kind="push", name="MR room", remote_ae_title="PPH_MR1")
    assert _associate(scp.port, "PPH_MR1").is_rejected
    # Called AE title must be the platform's (reason 7).
    assoc = _associate(scp.port, PUSH_AE, called="SOMEONE")
    assert assoc.is_rejected and assoc.acceptor.primitive.diagnostic == 7
    wait_idle(scp)
    assert any(line.startswith("association STRANGER@127.0.0.1: rejected (calling AE title not recognised)")
               for line in scp.lines)
    assert any(line.startswith(f"association {PUSH_AE}@127.0.0.1 [PPH]: rejected,") for line in scp.lines)


def test_endpoint_host_pins_the_peer_address(hospital_a, hospital_b):
    endpoint = endpoint_create(hospital=hospital_a, kind="dimse", name="PACS", remote_ae_title="PPH_ARCH",
                               host="127.0.0.2", port=104)
    endpoint.status = EndpointStatus.LIVE
    endpoint.save()
    assert identify_peer("PPH_ARCH", "127.0.0.1") is None
    assert identify_peer("PPH_ARCH", "127.0.0.2").hospital == hospital_a
    # The hospital's AE title registered on an endpoint with a host: the host applies to it too.
    endpoint_create(hospital=hospital_b, kind="push", name="Gateway", remote_ae_title="CITY1_PACS", host="127.0.0.3")
    assert identify_peer("CITY1_PACS", "127.0.0.1") is None
    # The same AE title registered for two hospitals identifies neither.
    for hospital in (hospital_a, hospital_b):
        ep = endpoint_create(hospital=hospital, kind="push", name="Shared", remote_ae_title="SHARED_AE")
        endpoint_go_live(endpoint=ep)
    assert identify_peer("SHARED_AE", "127.0.0.1") is None


# --- C-STORE ------------------------------------------------------------------------------------


def test_storescu_push_is_ingested_for_the_calling_hospital(scp, hospital_a, settings, tmp_path):
    files = write_ct(tmp_path / "ct", patient_id=SECRET_ID, name=SECRET_NAME)
    done = storescu(scp.port, PUSH_AE, *files)
    assert done.returncode == 0, done.stderr
    wait_idle(scp)

    study = Study.objects.get()
    assert study.hospital == hospital_a and study.num_instances == 3 and study.dicom_patient_id == SECRET_ID
    instances = {i.sop_instance_uid: i for i in Instance.objects.filter(series__study=study)}
    for path in files:
        sent = pydicom.dcmread(path)
        same_dataset(storage.path_for(instances[sent.SOPInstanceUID].storage_key), path)
    assert len(stored_files(settings)) == 3 and tmp_leftovers(settings) == []

    batch = IngestBatch.objects.get()
    assert (batch.source, batch.hospital, batch.stored, batch.rejected) == (IngestSource.DIMSE, hospital_a, 3, 0)
    assert batch.label == f"C-STORE from {PUSH_AE} (127.0.0.1)"
    # Each C-STORE is committed (and audited) before its response is sent: one event per instance.
    events = list(AuditEvent.objects.filter(event=Event.INSTANCES_STORED))
    assert sorted(uid for e in events for uid in e.details["sop_instance_uids"]) == sorted(instances)
    for event in events:
        assert event.study == study and event.outcome == Outcome.SUCCESS
        assert (event.actor_name, event.actor_role, event.actor_hospital) == ("dimse-pph", "ingest", hospital_a)
        assert event.details["calling_ae"] == PUSH_AE and event.details["source"] == "dimse"
        assert event.details["peer_address"] == "127.0.0.1" and event.details["batch"] == IngestBatch.objects.get().pk
    assert any(f"{PUSH_AE}@127.0.0.1 [PPH]: released, C-STORE 3 (stored 3, duplicate 0, failed 0)" in line
               for line in scp.lines)


def test_compressed_instances_are_stored_as_received(scp, settings, tmp_path):
    """No transcoding: an RLE Lossless instance is negotiated and stored in RLE Lossless."""
    ds = ct_dataset(patient_id="P-RLE")
    ds.compress(pydicom.uid.RLELossless)
    path = tmp_path / "rle.dcm"
    ds.save_as(path, enforce_file_format=True)
    done = run("storescu", "-xr", "-aet", PUSH_AE, "-aec", SCP_AE, "127.0.0.1", str(scp.port), str(path))
    assert done.returncode == 0, done.stderr
    instance = Instance.objects.get()
    assert instance.transfer_syntax_uid == pydicom.uid.RLELossless
    same_dataset(storage.path_for(instance.storage_key), path)


def test_associations_beyond_the_limit_are_rejected_as_transient(push_endpoint):
    need_dcmtk()
    server = DicomScp(ae_title=SCP_AE, host="127.0.0.1", port=0, max_associations=1, timeout=10)
    server.start()
    try:
        first = _associate(server.port, PUSH_AE)
        assert first.is_established
        second = _associate(server.port, PUSH_AE)
        assert second.is_rejected
        rj = second.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (2, 3, 2)  # transient, local limit exceeded
        first.release()
    finally:
        server.stop(grace=5)


def test_storing_the_same_file_twice_is_idempotent(scp, settings, tmp_path):
    files = write_ct(tmp_path / "ct", n=2)
    assert storescu(scp.port, PUSH_AE, *files).returncode == 0
    done = storescu(scp.port, PUSH_AE, *files)
    assert done.returncode == 0, done.stderr
    wait_idle(scp)
    assert Instance.objects.count() == 2 and Study.objects.get().num_instances == 2
    assert len(stored_files(settings)) == 2
    second = IngestBatch.objects.order_by("id").last()
    assert (second.stored, second.duplicates, second.rejected) == (0, 2, 0)


def test_a_dataset_the_ingest_refuses_gets_a_failure_status(scp, settings, tmp_path):
    # Valid DICOM, but no PatientID: the ingest refuses it (0xA900) and stores nothing.
    ds = ct_dataset()
    del ds.PatientID
    path = tmp_path / "nopid.dcm"
    ds.save_as(path, enforce_file_format=True)
    done = run("storescu", "-v", "-aet", PUSH_AE, "-aec", SCP_AE, "127.0.0.1", str(scp.port), str(path))
    assert done.returncode != 0 and "Store Response (Error: DataSetDoesNotMatchSOPClass)" in done.stderr
    wait_idle(scp)
    assert not Study.objects.exists() and stored_files(settings) == [] and tmp_leftovers(settings) == []
    batch = IngestBatch.objects.get()
    assert batch.rejected == 1 and batch.errors[0]["code"] == "0xA900"
    failure = AuditEvent.objects.get(event=Event.INSTANCES_STORED)
    assert failure.outcome == Outcome.SERIOUS_FAILURE and failure.details["rejected"] == 1


def test_malformed_dataset_fails_and_the_association_goes_on(scp, settings, tmp_path):
    """Bytes that are not a data set get 0xC000; the same association then stores a good one."""
    good = write_ct(tmp_path / "good", n=1)[0]
    broken = tmp_path / "broken.dcm"
    data = good.read_bytes()
    broken.write_bytes(data[: len(data) - 1000])  # truncated inside Pixel Data
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are
    try:
        ae = AE(ae_title=PUSH_AE)
        ae.add_requested_context(CTImageStorage, pydicom.uid.ExplicitVRLittleEndian)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title=SCP_AE)
        assert assoc.is_established
        try:
            assert assoc.send_c_store(broken).Status == 0xC000
            assert not Instance.objects.exists() and stored_files(settings) == [] and tmp_leftovers(settings) == []
            assert assoc.send_c_echo().Status == 0x0000
            assert assoc.send_c_store(good).Status == 0x0000
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before
    wait_idle(scp)
    assert Instance.objects.count() == 1 and len(stored_files(settings)) == 1
    assert any("C-STORE 2 (stored 1, duplicate 0, failed 1)" in line for line in scp.lines)


def test_an_association_aborted_mid_transfer_leaves_nothing_behind(scp, settings, tmp_path, monkeypatch):
    """The SCU sends the command and half the data set, then aborts: no file, no row, no batch
    counts, and pynetdicom's temporary file is gone too."""
    received = tmp_path / "received"
    received.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(received))  # where pynetdicom writes what arrives
    ds = ct_dataset(size=256)
    ae = AE(ae_title=PUSH_AE)
    ae.add_requested_context(CTImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=SCP_AE)
    assert assoc.is_established
    request = C_STORE()
    request.MessageID, request.Priority = 1, 2
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = CTImageStorage, ds.SOPInstanceUID
    request.DataSet = io.BytesIO(encode(ds, False, True))  # explicit VR little endian, no file meta
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    fragments = list(message.encode_msg(next(iter(assoc._accepted_cx)), 16384))
    assert len(fragments) > 4
    for pdu in fragments[: len(fragments) // 2]:
        assoc.dul.send_pdu(pdu)
    deadline = time.monotonic() + 10
    while not list(received.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(received.iterdir()), "the SCP did not start receiving"
    assoc.abort()
    wait_idle(scp)
    assert list(received.iterdir()) == []
    assert not Instance.objects.exists() and stored_files(settings) == [] and tmp_leftovers(settings) == []
    assert any(line.startswith(f"association {PUSH_AE}@127.0.0.1 [PPH]: aborted") for line in scp.lines)


# --- C-FIND -------------------------------------------------------------------------------------


@pytest.fixture
def two_hospitals(scp, tmp_path):
    """PPH pushed one CT study (3 images), CITY1 another (2 images)."""
    pph = write_ct(tmp_path / "pph", n=3, patient_id=SECRET_ID, name=SECRET_NAME, accession="PA1")
    city = write_ct(tmp_path / "city", n=2, patient_id="C1-000042", name="Li^Na=李^娜", accession="C1A7")
    assert storescu(scp.port, PUSH_AE, *pph).returncode == 0
    assert storescu(scp.port, "CITY1_PACS", *city).returncode == 0
    wait_idle(scp)
    return pydicom.dcmread(pph[0]), pydicom.dcmread(city[0])


def test_findscu_answers_only_what_the_calling_hospital_may_see(scp, two_hospitals, tmp_path):
    pph, city = two_hospitals
    out = tmp_path / "rsp"
    keys = ("QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientName", "PatientID", "AccessionNumber",
            "ModalitiesInStudy", "NumberOfStudyRelatedInstances")
    answers = findscu(scp.port, PUSH_AE, out, *keys)
    assert [a.StudyInstanceUID for a in answers] == [pph.StudyInstanceUID]
    assert answers[0].PatientID == SECRET_ID and answers[0].AccessionNumber == "PA1"
    assert str(answers[0].PatientName) == str(pph.PatientName) and answers[0].NumberOfStudyRelatedInstances == 3
    assert [a.StudyInstanceUID for a in findscu(scp.port, "CITY1_PACS", out, *keys)] == [city.StudyInstanceUID]
    # Asking for the other hospital's study by UID finds nothing.
    assert findscu(scp.port, PUSH_AE, out, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={city.StudyInstanceUID}") == []
    # Wildcard matching on the name, in hanzi or pinyin.
    assert len(findscu(scp.port, PUSH_AE, out, "QueryRetrieveLevel=STUDY", "SpecificCharacterSet=ISO_IR 192",
                       "PatientName=诸葛*")) == 1
    assert len(findscu(scp.port, PUSH_AE, out, "QueryRetrieveLevel=STUDY", "PatientName=zhuge*")) == 1
    assert findscu(scp.port, PUSH_AE, out, "QueryRetrieveLevel=STUDY", "PatientName=Li*") == []

    event = AuditEvent.objects.filter(event=Event.QUERY).order_by("id").first()
    assert event.actor_name == "dimse-pph" and event.details["service"] == "C-FIND"
    assert event.details["calling_ae"] == PUSH_AE and event.details["level"] == "study" and event.details["results"] == 1
    assert AuditEvent.objects.filter(event=Event.QUERY).count() == 6


def test_findscu_series_image_and_patient_levels(scp, two_hospitals, tmp_path):
    pph, _ = two_hospitals
    out = tmp_path / "rsp"
    series = findscu(scp.port, PUSH_AE, out, "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={pph.StudyInstanceUID}",
                     "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances")
    assert [(s.SeriesInstanceUID, s.Modality, s.NumberOfSeriesRelatedInstances) for s in series] == [
        (pph.SeriesInstanceUID, "CT", 3)]
    images = findscu(scp.port, PUSH_AE, out, "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={pph.StudyInstanceUID}",
                     f"SeriesInstanceUID={pph.SeriesInstanceUID}", "SOPInstanceUID", "InstanceNumber")
    assert sorted(int(i.InstanceNumber) for i in images) == [1, 2, 3]
    patients = findscu(scp.port, PUSH_AE, out, "QueryRetrieveLevel=PATIENT", "PatientID", "PatientName",
                       "NumberOfPatientRelatedStudies", patient_root=True)
    assert [(p.PatientID, p.NumberOfPatientRelatedStudies) for p in patients] == [(SECRET_ID, 1)]


def test_find_refusals_are_clear_statuses(scp, two_hospitals, settings):
    ae = AE(ae_title=PUSH_AE)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=SCP_AE)
    try:
        def ask(**keys):
            query = pydicom.Dataset()
            for k, v in keys.items():
                setattr(query, k, v)
            return [status.Status for status, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)]

        assert ask(QueryRetrieveLevel="PATIENT", PatientID="") == [0xA900]  # not a level of Study Root
        assert ask(QueryRetrieveLevel="STUDY", StudyDate="2026-01-01") == [0xC000]
        # StudyTime cannot be matched on: the answer says so (pending with warning).
        assert ask(QueryRetrieveLevel="STUDY", StudyTime="101500") == [0xFF01, 0x0000]
        assert ask(QueryRetrieveLevel="STUDY", StudyTime="") == [0xFF00, 0x0000]
        settings.QIDO_MAX_LIMIT = 0
        assert ask(QueryRetrieveLevel="STUDY", StudyInstanceUID="") == [0xA700]
    finally:
        assoc.release()


# --- The command ----------------------------------------------------------------------------------


def test_dicom_scp_command_runs_until_sigterm_and_logs_no_patient_data(push_endpoint, caplog, tmp_path, settings):
    need_dcmtk()
    caplog.set_level("DEBUG")
    port = free_port()
    files = write_ct(tmp_path / "ct", n=2, patient_id=SECRET_ID, name=SECRET_NAME)
    results: dict = {}

    def drive():
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            results["echo"] = echoscu(port, PUSH_AE).returncode
            results["store"] = storescu(port, PUSH_AE, *files).returncode
            results["find"] = run("findscu", "-S", "-aet", PUSH_AE, "-aec", SCP_AE, "-k", "QueryRetrieveLevel=STUDY",
                                  "-k", "PatientName", "-k", "PatientID", "127.0.0.1", str(port)).returncode
            results["stranger"] = echoscu(port, "STRANGER").returncode
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    out = io.StringIO()
    driver = threading.Thread(target=drive)
    driver.start()
    call_command("dicom_scp", "--port", str(port), "--ae-title", SCP_AE, stdout=out)
    driver.join(timeout=60)

    assert results == {"echo": 0, "store": 0, "find": 0, "stranger": 1}
    assert Study.objects.get().num_instances == 2
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"DICOM SCP {SCP_AE} listening on 127.0.0.1:{port}") and lines[-1] == "stopped"
    assert [line.split(":")[0] for line in lines if line.startswith("association ")] == [
        f"association {PUSH_AE}@127.0.0.1 [PPH]"] * 3 + ["association STRANGER@127.0.0.1"]
    everything = out.getvalue() + caplog.text
    for secret in (SECRET_ID, "Zhuge", "Kongming", "诸葛", "孔明"):
        assert secret not in everything
