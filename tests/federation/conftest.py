"""Real archives for federation tests: Orthanc servers (DICOMweb plugin) on loopback ports with
synthetic studies from fixtures/province.py. In CI a missing Orthanc fails (tests.conftest.require)."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import pytest
import requests
from cryptography.fernet import Fernet

from fixtures.province import generate_province, write_study
from tests.conftest import require
from tests.federation.orthanc import OrthancServer, available

SEED = 2026
CT_SIZE = 64


@pytest.fixture(autouse=True)
def _eager_tasks(celery_eager):
    """Sync tasks run in-process here; the real broker is exercised by tests/studies/test_tasks.py."""


@pytest.fixture(autouse=True)
def _encryption_keys(settings):
    # Endpoint secrets are Fernet-encrypted; test runs have no DEBUG development key.
    if not getattr(settings, "EXCHANGE_ENCRYPTION_KEYS", None):
        settings.EXCHANGE_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]


def need_orthanc() -> None:
    ok, why = available()
    require("Orthanc with the DICOMweb plugin", ok, why)


@pytest.fixture(scope="session")
def province():
    return generate_province(seed=SEED, persons=8, ct_slices=3, ct_size=CT_SIZE)


@pytest.fixture(scope="session")
def study_files(province, tmp_path_factory):
    """Part 10 files per hospital code: {code: [paths]}."""
    root = tmp_path_factory.mktemp("province")
    out: dict[str, list[Path]] = defaultdict(list)
    for n, study in enumerate(province.studies):
        code = study.registration.hospital_code
        out[code] += write_study(study, root / code / str(n), seed=province.seed, ct_size=CT_SIZE)
    return dict(out)


def source_index(server: OrthancServer) -> dict:
    """What the archive holds, from its own REST API: {study uid: {series uid: {sop uids}}}."""
    s = requests.Session()
    s.auth = server.auth
    index: dict[str, dict[str, set]] = {}
    for inst in s.get(server.url + "/instances", params={"expand": ""}, timeout=30).json():
        tags = s.get(f"{server.url}/instances/{inst['ID']}/simplified-tags", timeout=30).json()
        index.setdefault(tags["StudyInstanceUID"], {}).setdefault(tags["SeriesInstanceUID"], set()).add(tags["SOPInstanceUID"])
    return index


@pytest.fixture(scope="session")
def archives(study_files, tmp_path_factory):
    """PPH: DICOMweb with HTTP Basic auth; CITY1: DICOMweb without auth; CNTY: reached over DIMSE only."""
    need_orthanc()
    root = tmp_path_factory.mktemp("orthanc")
    servers = {
        "PPH": OrthancServer(root / "pph", aet="PPH_PACS", username="platform", password="s3cret-pass"),
        "CITY1": OrthancServer(root / "city1", aet="CITY1_PACS"),
        "CNTY": OrthancServer(root / "cnty", aet="CNTY_PACS"),
    }
    try:
        for code, server in servers.items():
            server.start()
            server.upload(study_files.get(code, []))
        yield servers
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
