"""The hospital admin's onboarding pages and the operator commands, against a real Orthanc."""

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from exchange.federation.models import JobStatus, SyncJob
from exchange.studies.models import Study
from hospitals.models import ArchiveEndpoint, EndpointStatus
from hospitals.services import account_create, hospital_create
from tests.conftest import PASSWORD
from tests.federation.conftest import source_index

pytestmark = pytest.mark.django_db


def login(user) -> Client:
    client = Client()
    assert client.post("/accounts/login/", {"username": user.username, "password": PASSWORD}).status_code == 302
    return client


def test_admin_onboards_an_archive_through_the_pages(archives, admin_a, clinician_a, hospital_b,
                                                    django_capture_on_commit_callbacks, settings):
    settings.FEDERATION_QIDO_PAGE = 3
    server = archives["CITY1"]
    client = login(admin_a)
    assert client.get("/hospital/profile/").status_code == 200
    response = client.post("/hospital/archives/add/", {
        "kind": "dicomweb", "name": "Main PACS", "qido_url": server.dicomweb, "auth": "none", "verify_tls": "on",
        "timeout": "10", "retrieve_method": "c-get"})
    assert response.status_code == 302, response.content.decode()[:2000]
    endpoint = ArchiveEndpoint.objects.get(name="Main PACS")
    assert endpoint.hospital == admin_a.profile.hospital
    page = client.get(f"/hospital/archives/{endpoint.pk}/")
    assert page.status_code == 200 and b"Test connection" in page.content

    client.post(f"/hospital/archives/{endpoint.pk}/test/")
    page = client.get(f"/hospital/archives/{endpoint.pk}/")
    assert "Connected: QIDO-RS answered" in page.content.decode()
    # going live before the initial sync is refused
    client.post(f"/hospital/archives/{endpoint.pk}/live/")
    assert ArchiveEndpoint.objects.get(pk=endpoint.pk).status == EndpointStatus.TESTING

    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(f"/hospital/archives/{endpoint.pk}/sync/").status_code == 302
    status = client.get(f"/hospital/archives/{endpoint.pk}/status.json").json()
    assert status["job"]["status"] == JobStatus.DONE and status["job"]["progress"] == 100
    assert status["job"]["studies_created"] == len(source_index(server))
    client.post(f"/hospital/archives/{endpoint.pk}/live/")
    assert ArchiveEndpoint.objects.get(pk=endpoint.pk).status == EndpointStatus.LIVE

    # a clinician cannot manage archives; another hospital's admin does not even see this one
    other_admin = account_create(username="admin_b", role="hospital_admin", password=PASSWORD, hospital=hospital_b)
    assert login(clinician_a).get("/hospital/profile/").status_code == 403
    assert login(clinician_a).get(f"/hospital/archives/{endpoint.pk}/status.json").status_code == 403
    other = login(other_admin)
    for url in ("", "status.json"):
        assert other.get(f"/hospital/archives/{endpoint.pk}/{url}").status_code == 404
    for action in ("test", "sync", "live"):
        assert other.post(f"/hospital/archives/{endpoint.pk}/{action}/").status_code == 404
    assert SyncJob.objects.count() == 1


def test_operator_commands(archives, settings, monkeypatch, django_capture_on_commit_callbacks):
    settings.FEDERATION_QIDO_PAGE = 50
    hospital = hospital_create(code="PPH", name="Provincial People's Hospital", authority="PPH-MRN", ae_title="PPH_GW")
    server = archives["PPH"]
    out = io.StringIO()
    monkeypatch.setattr("sys.stdin", io.StringIO(server.password + "\n"))
    call_command("add_archive", "PPH", "--kind", "dicomweb", "--qido", server.dicomweb, "--auth", "basic",
                 "--username", server.username, "--password-stdin", stdout=out)
    endpoint = ArchiveEndpoint.objects.get(hospital=hospital)
    assert endpoint.secret == server.password
    call_command("test_archive", "PPH", stdout=out)
    assert "Connected" in out.getvalue()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("sync_archive", "PPH", "--since", "20000101", stdout=out)
    assert Study.objects.filter(hospital=hospital).count() == len(source_index(server))

    call_command("add_archive", "PPH", "--kind", "dimse", "--name", "old", "--ae", "WRONG_AE", "--host", "127.0.0.1",
                 "--port", str(server.dicom_port), stdout=out)
    dimse = ArchiveEndpoint.objects.get(name="old")
    with pytest.raises(CommandError):
        call_command("test_archive", str(dimse.pk), stdout=out)
    assert "called AE title not recognised" in out.getvalue()
    with pytest.raises(CommandError):
        call_command("add_archive", "PPH", "--kind", "dicomweb", "--name", "x", stdout=out)
    with pytest.raises(CommandError):
        call_command("sync_archive", "PPH", "--since", "yesterday", stdout=out)
