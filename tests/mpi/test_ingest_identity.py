"""Every identity that arrives by DICOM goes through the one matcher (STOW-RS here)."""

import pydicom
import pytest
from pydicom.data import get_charset_files

from exchange.mpi import matching
from exchange.mpi.models import Patient, PatientIdentifier, ReviewItem, RicStatus
from exchange.studies.models import Study
from tests.conftest import api
from tests.dicom import RIC_WANG, ct_dataset, multipart, to_bytes

pytestmark = pytest.mark.django_db
TEST_KEY = "8BTvCw77-vCIG6ByHmRDKVolGfLaS6wCINJfHq_2X6I="


@pytest.fixture(autouse=True)
def _mpi_settings(settings):
    if not settings.EXCHANGE_ENCRYPTION_KEYS:
        settings.EXCHANGE_ENCRYPTION_KEYS = [TEST_KEY]
    settings.MPI_LINK_THRESHOLD = matching.DEFAULT_LINK_THRESHOLD
    settings.MPI_REVIEW_THRESHOLD = matching.DEFAULT_REVIEW_THRESHOLD


def stow(user, ds) -> Study:
    body, ctype = multipart([to_bytes(ds)])
    response = api(user).generic("POST", "/dicomweb/studies", body, content_type=ctype)
    assert response.status_code == 200, response.content
    return Study.objects.get(study_instance_uid=ds.StudyInstanceUID)


def charset_name(filename: str) -> tuple[str, str]:
    [path] = get_charset_files(filename)
    ds = pydicom.dcmread(path)
    return str(ds.PatientName), ds.SpecificCharacterSet


def test_gb18030_and_utf8_names_from_pydicom_charset_files_match_their_pinyin(ingest_a, ingest_b, hospital_a):
    gb_name, gb_charset = charset_name("chrX2.dcm")  # Wang^XiaoDong=王^小东, GB18030
    utf_name, utf_charset = charset_name("chrX1.dcm")  # Wang^XiaoDong=王^小東, UTF-8 (traditional)
    assert gb_charset == "GB18030" and "王" in gb_name and "王" in utf_name
    a = stow(ingest_a, ct_dataset(patient_id="GB1", name=gb_name, charset=gb_charset))
    b = stow(ingest_b, ct_dataset(patient_id="UTF1", name=utf_name, charset=utf_charset))
    # a third registration in pinyin only, lower case with a space
    c = stow(ingest_b, ct_dataset(patient_id="PY1", name="wang^xiao dong"))
    keys = set(PatientIdentifier.objects.values_list("name_key", flat=True))
    assert keys == {"wangxiaodong"}
    assert a.patient_id == b.patient_id
    assert c.patient_id == a.patient_id or ReviewItem.objects.filter(identifier__local_id="PY1").exists()


def test_phone_issuer_and_other_ids_are_taken_from_the_dataset(ingest_a):
    ds = ct_dataset(patient_id="PPH0001", ric=RIC_WANG)
    ds.IssuerOfPatientID = "PPH-MRN"
    ds.PatientTelephoneNumbers = ["0086 138 1234 5678", "010-1234567"]
    item = pydicom.Dataset()
    item.PatientID = "INS-778899"
    item.IssuerOfPatientID = "CN-MEDICAL-INSURANCE"
    ds.OtherPatientIDsSequence.append(item)
    stow(ingest_a, ds)
    ident = PatientIdentifier.objects.get()
    assert ident.issuer == "PPH-MRN"
    assert ident.get_phone() == "13812345678" and ident.get_ric() == RIC_WANG
    assert ident.other_ids == [{"system": "CN-MEDICAL-INSURANCE", "value": "INS-778899"}]


def test_invalid_identity_number_in_dataset_is_flagged_not_trusted(ingest_a, ingest_b):
    bad = RIC_WANG[:-1] + ("5" if RIC_WANG[-1] != "5" else "6")
    stow(ingest_a, ct_dataset(patient_id="A1", name="Zhao^Yun", birth_date="19700101", ric=bad))
    stow(ingest_b, ct_dataset(patient_id="B1", name="Qian^Duo", birth_date="19800101", sex="F", ric=bad))
    assert set(PatientIdentifier.objects.values_list("ric_status", flat=True)) == {RicStatus.INVALID}
    assert Patient.objects.count() == 2


def test_twins_arriving_by_dicom_stay_two_patients(ingest_a):
    stow(ingest_a, ct_dataset(patient_id="T1", name="Li^Ming=李^明"))
    stow(ingest_a, ct_dataset(patient_id="T2", name="Li^Liang=李^亮"))
    assert Patient.objects.count() == 2


def test_same_local_id_at_two_hospitals_links_only_when_demographics_match(ingest_a, ingest_b):
    a = stow(ingest_a, ct_dataset(patient_id="P001", name="Zhang^San=张^三", birth_date="19600202"))
    b = stow(ingest_b, ct_dataset(patient_id="P001", name="Liu^Fang=刘^芳", birth_date="19850709", sex="F"))
    assert a.patient_id != b.patient_id
    c = stow(ingest_b, ct_dataset(patient_id="P002", name="Zhang^San=张^三", birth_date="19600202"))
    assert c.patient_id == a.patient_id


def test_many_instances_of_one_patient_make_one_identifier(ingest_a):
    first = ct_dataset(patient_id="M1", instance_number=1)
    datasets = [first] + [ct_dataset(patient_id="M1", instance_number=n, study_uid=first.StudyInstanceUID,
                                     series_uid=first.SeriesInstanceUID) for n in range(2, 41)]
    body, ctype = multipart([to_bytes(d) for d in datasets])
    assert api(ingest_a).generic("POST", "/dicomweb/studies", body, content_type=ctype).status_code == 200
    assert PatientIdentifier.objects.count() == 1 and Study.objects.get().num_instances == 40
