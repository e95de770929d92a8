"""The platform driven over HTTP by a DICOMweb client nobody here wrote (dicomweb-client)."""

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from rest_framework.authtoken.models import Token

from tests.dicom import ct_dataset

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def client_for(live_server):
    """DICOMweb clients for users; their keep-alive connections are closed after the test, so no
    live-server thread is left waiting on one when the test process exits."""
    sessions = []

    def make(user) -> DICOMwebClient:
        token, _ = Token.objects.get_or_create(user=user)
        session = requests.Session()
        session.headers["Authorization"] = f"Token {token.key}"
        sessions.append(session)
        return DICOMwebClient(url=f"{live_server.url}/dicomweb", session=session)

    yield make
    for session in sessions:
        session.close()


def test_store_search_retrieve_with_dicomweb_client(client_for, ingest_a, clinician_a):
    datasets = [ct_dataset(patient_id="PPH0042", instance_number=n) for n in (1, 2, 3)]
    for ds in datasets[1:]:
        ds.StudyInstanceUID, ds.SeriesInstanceUID = datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID

    gateway = client_for(ingest_a)
    response = gateway.store_instances(datasets)
    assert len(response.ReferencedSOPSequence) == 3
    assert "FailedSOPSequence" not in response

    clinician = client_for(clinician_a)
    studies = clinician.search_for_studies(search_filters={"PatientName": "王*"})
    assert [pydicom.Dataset.from_json(s).StudyInstanceUID for s in studies] == [datasets[0].StudyInstanceUID]
    instances = clinician.search_for_instances(study_instance_uid=datasets[0].StudyInstanceUID)
    assert len(instances) == 3

    study = clinician.retrieve_study(datasets[0].StudyInstanceUID)
    by_uid = {ds.SOPInstanceUID: ds for ds in study}
    for original in datasets:
        assert by_uid[original.SOPInstanceUID].PixelData == original.PixelData

    one = clinician.retrieve_instance(datasets[1].StudyInstanceUID, datasets[1].SeriesInstanceUID, datasets[1].SOPInstanceUID)
    assert one.PixelData == datasets[1].PixelData
    frames = clinician.retrieve_instance_frames(
        datasets[2].StudyInstanceUID, datasets[2].SeriesInstanceUID, datasets[2].SOPInstanceUID, frame_numbers=[1]
    )
    assert frames == [datasets[2].PixelData]
    metadata = clinician.retrieve_study_metadata(datasets[0].StudyInstanceUID)
    assert len(metadata) == 3

    rendered = clinician.retrieve_instance_rendered(
        datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID, datasets[0].SOPInstanceUID, media_types=("image/png",)
    )
    assert rendered[:8] == b"\x89PNG\r\n\x1a\n"
