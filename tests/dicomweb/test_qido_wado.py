"""QIDO-RS search and WADO-RS retrieve on the platform's own store (PS3.18 §10.4, §10.6)."""

import io

import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from audit.models import AuditEvent, Event
from exchange.dicomweb.multipart import MultipartReader
from tests.conftest import api, make_patient_user
from tests.dicom import RIC_WANG, ct_dataset, multipart, to_bytes

pytestmark = pytest.mark.django_db


def stow(user, datasets):
    body, ctype = multipart([d if isinstance(d, bytes) else to_bytes(d) for d in datasets])
    response = api(user).generic("POST", "/dicomweb/studies", body, content_type=ctype)
    assert response.status_code == 200, response.content
    return response


def parts_of(response) -> list[tuple[dict, bytes]]:
    ctype = response["Content-Type"]
    boundary = ctype.split("boundary=")[1].split(";")[0].strip('"')
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return [(p.headers, b"".join(p.chunks())) for p in MultipartReader(io.BytesIO(body), boundary).parts()]


@pytest.fixture
def two_hospitals(ingest_a, ingest_b, clinician_a, clinician_b):
    wang = [ct_dataset(patient_id="PPH0001", ric=RIC_WANG, instance_number=n) for n in (1, 2)]
    wang[1].StudyInstanceUID, wang[1].SeriesInstanceUID = wang[0].StudyInstanceUID, wang[0].SeriesInstanceUID
    zhang = ct_dataset(patient_id="PPH0002", name="Zhang^Wei=张^伟", study_date="20250615", modality="MR", accession="ACC2")
    other = ct_dataset(patient_id="C1-9", name="Li^Na=李^娜", study_date="20240101", accession="B77")
    stow(ingest_a, wang + [zhang])
    stow(ingest_b, [other])
    return {"wang": wang, "zhang": zhang, "other": other}


def qido(user, path="/dicomweb/studies", **params):
    response = api(user).get(path, params)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("application/dicom+json")
    return response.json()


def uids(results, tag="0020000D"):
    return {r[tag]["Value"][0] for r in results}


@pytest.mark.parametrize(
    "params, expected",
    [
        ({}, {"wang", "zhang"}),
        ({"PatientName": "Wang*"}, {"wang"}),
        ({"PatientName": "王*"}, {"wang"}),
        ({"PatientName": "王^小东"}, {"wang"}),
        ({"PatientName": "wang xiaodong"}, {"wang"}),
        ({"PatientName": "WÁNG*"}, {"wang"}),
        ({"PatientName": "zhang*"}, {"zhang"}),
        ({"PatientName": "张?"}, {"zhang"}),
        ({"00100020": "PPH0002"}, {"zhang"}),
        ({"PatientID": "PPH*"}, {"wang", "zhang"}),
        ({"StudyDate": "20250101-20251231"}, {"zhang"}),
        ({"StudyDate": "-20251231"}, {"zhang"}),
        ({"StudyDate": "20260101"}, {"wang"}),
        ({"ModalitiesInStudy": "MR"}, {"zhang"}),
        ({"ModalitiesInStudy": "CT,MR"}, {"wang", "zhang"}),
        ({"AccessionNumber": "ACC2"}, {"zhang"}),
        ({"PatientName": "li*"}, set()),  # at hospital B: invisible to A
    ],
)
def test_qido_studies_matching(two_hospitals, clinician_a, params, expected):
    names = {k: v.StudyInstanceUID for k, v in (("wang", two_hospitals["wang"][0]), ("zhang", two_hospitals["zhang"]), ("other", two_hospitals["other"]))}
    assert uids(qido(clinician_a, **params)) == {names[e] for e in expected}


def test_qido_study_attributes_and_counts(two_hospitals, clinician_a):
    [study] = qido(clinician_a, StudyInstanceUID=two_hospitals["wang"][0].StudyInstanceUID)
    assert study["00100010"]["Value"][0] == {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小东"}
    assert study["00201208"]["Value"] == [2] and study["00201206"]["Value"] == [1]
    assert study["00080061"]["Value"] == ["CT"]


def test_qido_limit_offset_and_bad_parameters(two_hospitals, clinician_a):
    first = qido(clinician_a, limit=1)
    second = qido(clinician_a, limit=1, offset=1)
    assert len(first) == len(second) == 1 and uids(first) != uids(second)
    for bad in ({"limit": "x"}, {"limit": "-1"}, {"StudyDate": "2025"}, {"StudyDate": "20251301"}, {"StudyInstanceUID": "abc"}):
        response = api(clinician_a).get("/dicomweb/studies", bad)
        assert response.status_code == 400 and response.json()["error"]


def test_qido_series_and_instances(two_hospitals, clinician_a):
    wang = two_hospitals["wang"][0]
    series = qido(clinician_a, f"/dicomweb/studies/{wang.StudyInstanceUID}/series")
    assert uids(series, "0020000E") == {wang.SeriesInstanceUID}
    instances = qido(clinician_a, f"/dicomweb/studies/{wang.StudyInstanceUID}/series/{wang.SeriesInstanceUID}/instances")
    assert uids(instances, "00080018") == {d.SOPInstanceUID for d in two_hospitals["wang"]}
    assert uids(qido(clinician_a, "/dicomweb/series", Modality="MR"), "0020000E") == {two_hospitals["zhang"].SeriesInstanceUID}
    assert len(qido(clinician_a, "/dicomweb/instances")) == 3
    # Another hospital's study does not show through a series or instance search either.
    other = two_hospitals["other"]
    assert qido(clinician_a, f"/dicomweb/studies/{other.StudyInstanceUID}/series") == []


def test_qido_is_audited_with_the_query(two_hospitals, clinician_a):
    qido(clinician_a, PatientName="Wang*")
    event = AuditEvent.objects.filter(event=Event.QUERY, actor=clinician_a).latest("id")
    assert event.details["query"] == {"PatientName": "Wang*"} and event.details["results"] == 1


def test_regulator_and_anonymous_see_nothing(two_hospitals, regulator):
    assert qido(regulator) == []
    assert api(None).get("/dicomweb/studies").status_code == 401


def test_wado_retrieves_byte_identical_pixel_data(two_hospitals, clinician_a):
    wang = two_hospitals["wang"]
    response = api(clinician_a).get(f"/dicomweb/studies/{wang[0].StudyInstanceUID}", HTTP_ACCEPT='multipart/related; type="application/dicom"')
    assert response.status_code == 200
    parts = parts_of(response)
    assert len(parts) == 2
    received = {pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID: pydicom.dcmread(io.BytesIO(body)) for _, body in parts}
    for original in wang:
        assert received[original.SOPInstanceUID].PixelData == original.PixelData
        assert received[original.SOPInstanceUID].PatientName == original.PatientName
    assert AuditEvent.objects.filter(event=Event.INSTANCES_TRANSFERRED, actor=clinician_a).exists()


def test_wado_series_and_instance_levels(two_hospitals, clinician_a):
    d = two_hospitals["wang"][1]
    base = f"/dicomweb/studies/{d.StudyInstanceUID}/series/{d.SeriesInstanceUID}"
    assert len(parts_of(api(clinician_a).get(base))) == 2
    [(headers, body)] = parts_of(api(clinician_a).get(f"{base}/instances/{d.SOPInstanceUID}"))
    assert headers["content-type"].startswith("application/dicom")
    assert pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID == d.SOPInstanceUID


def test_wado_of_another_hospitals_study_is_403_with_a_reason_and_audited(two_hospitals, clinician_a):
    other = two_hospitals["other"]
    response = api(clinician_a).get(f"/dicomweb/studies/{other.StudyInstanceUID}")
    assert response.status_code == 403
    assert "access denied" in response.json()["error"]
    assert AuditEvent.objects.filter(event=Event.ACCESS_DENIED, actor=clinician_a).exists()
    assert api(clinician_a).get("/dicomweb/studies/1.2.3.999").status_code == 404


def test_patient_sees_own_studies_across_hospitals(two_hospitals, ingest_b):
    from exchange.mpi.models import Patient

    stow(ingest_b, [ct_dataset(patient_id="C1-1", name="Wang^XiaoDong", ric=RIC_WANG)])
    patient = Patient.objects.get(ric_index__isnull=False)
    user = make_patient_user(patient)
    assert len(qido(user)) == 2
    assert api(user).get(f"/dicomweb/studies/{two_hospitals['zhang'].StudyInstanceUID}").status_code == 403


def test_metadata(two_hospitals, clinician_a):
    d = two_hospitals["wang"][0]
    response = api(clinician_a).get(f"/dicomweb/studies/{d.StudyInstanceUID}/metadata")
    assert response.status_code == 200
    items = response.json()
    assert len(items) == 2
    item = next(i for i in items if i["00080018"]["Value"][0] == d.SOPInstanceUID)
    assert item["00100010"]["Value"][0]["Ideographic"] == "王^小东"
    assert "BulkDataURI" in item["7FE00010"] and "InlineBinary" not in item["7FE00010"]


def test_frames_native(two_hospitals, clinician_a):
    d = two_hospitals["wang"][0]
    url = f"/dicomweb/studies/{d.StudyInstanceUID}/series/{d.SeriesInstanceUID}/instances/{d.SOPInstanceUID}/frames/1"
    [(headers, body)] = parts_of(api(clinician_a).get(url, HTTP_ACCEPT='multipart/related; type="application/octet-stream"'))
    assert body == d.PixelData
    assert api(clinician_a).get(url[:-1] + "2").status_code == 404


def test_rendered_png_and_jpeg_with_window(two_hospitals, clinician_a):
    d = two_hospitals["wang"][0]
    url = f"/dicomweb/studies/{d.StudyInstanceUID}/series/{d.SeriesInstanceUID}/instances/{d.SOPInstanceUID}/rendered"
    png = api(clinician_a).get(url, {"window": "40,400"}, HTTP_ACCEPT="image/png")
    assert png.status_code == 200 and png["Content-Type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    assert image.size == (32, 32)
    # Body is 40 HU: the window centre maps it to mid-grey; air (-1024) is black.
    assert abs(image.getpixel((16, 16)) - 128) <= 1 and image.getpixel((1, 30)) == 0
    jpeg = api(clinician_a).get(url, HTTP_ACCEPT="image/jpeg")
    assert jpeg["Content-Type"] == "image/jpeg" and jpeg.content[:2] == b"\xff\xd8"
    assert api(clinician_a).get(url, {"window": "40"}).status_code == 400


@pytest.mark.parametrize(
    "name",
    ["JPEG2000.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_dcmtk.dcm"],
)
def test_compressed_instances_render(ingest_a, clinician_a, name):
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.PatientID = ds.get("PatientID") or "TEST"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    stow(ingest_a, [buf.getvalue()])
    url = (f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}/rendered")
    response = api(clinician_a).get(url, HTTP_ACCEPT="image/png")
    assert response.status_code == 200, response.content
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (ds.Columns, ds.Rows)
    assert len(set(image.getdata())) > 10  # a real picture, not a blank
    frames = api(clinician_a).get(url.replace("/rendered", "/frames/1"), HTTP_ACCEPT="multipart/related; type=application/octet-stream; transfer-syntax=*")
    [(headers, body)] = parts_of(frames)
    assert ds.file_meta.TransferSyntaxUID in headers["content-type"]


def test_qido_modalities_in_study_lists_each_study_once(ingest_a, clinician_a):
    # given: one study with two CT series and an MR series (ModalitiesInStudy is matched on
    # series without a join, and the study search runs without DISTINCT)
    first = ct_dataset(patient_id="PPH0003", accession="Acc-Multi")
    more = [ct_dataset(patient_id="PPH0003", accession="Acc-Multi", study_uid=first.StudyInstanceUID, modality=m)
            for m in ("CT", "MR")]
    stow(ingest_a, [first, *more])
    for params in ({"ModalitiesInStudy": "CT"}, {"ModalitiesInStudy": "CT,MR"}, {"ModalitiesInStudy": "ct\\mr"}):
        # when
        results = qido(clinician_a, **params)
        # then: once, with all its modalities
        assert [r["0020000D"]["Value"][0] for r in results] == [first.StudyInstanceUID], params
        assert sorted(results[0]["00080061"]["Value"]) == ["CT", "MR"]
    # PatientID and AccessionNumber match case-insensitively (served by the UPPER() indexes)
    assert uids(qido(clinician_a, PatientID="pph0003")) == {first.StudyInstanceUID}
    assert uids(qido(clinician_a, AccessionNumber="ACC-MULTI")) == {first.StudyInstanceUID}
    assert qido(clinician_a, ModalitiesInStudy="US") == []
