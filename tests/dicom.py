"""Small synthetic DICOM objects for tests (never real patient data)."""

import io
import os

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

# A valid Resident Identity Card number of a synthetic person (check digit computed, not real).
RIC_WANG = "110101199003074514"
RIC_LI = "110101198501010025"


def ct_dataset(*, patient_id="P001", name="Wang^XiaoDong=王^小东", study_uid=None, series_uid=None, sop_uid=None,
               charset="ISO_IR 192", ric=None, birth_date="19900307", sex="M", size=32, instance_number=1,
               study_date="20260101", modality="CT", accession="ACC1") -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\x01" * 128)
    ds.SpecificCharacterSet = charset
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    if ric:
        item = pydicom.Dataset()
        item.PatientID = ric
        item.IssuerOfPatientID = "RIC"
        ds.OtherPatientIDsSequence = [item]
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession
    ds.StudyDescription = "CT chest"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2
    pixels = np.where(body, 1024 + 40, 0).astype(np.int16)
    pixels[0, 0] = instance_number  # makes every instance's pixels distinct
    ds.PixelData = pixels.tobytes()
    return ds


def to_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def multipart(files: list[bytes], boundary="testboundary", content_type="application/dicom") -> tuple[bytes, str]:
    body = b""
    for data in files:
        body += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def stored_files(settings) -> list[str]:
    """Files in content-addressed storage (not the spool)."""
    out = []
    for dirpath, _, names in os.walk(settings.EXCHANGE_STORAGE_DIR):
        if os.path.basename(dirpath) in ("tmp", "uploads"):
            continue
        out += [os.path.join(dirpath, n) for n in names]
    return out


def tmp_leftovers(settings) -> list[str]:
    """Spool files left behind (there must be none after any ingest)."""
    tmp = settings.EXCHANGE_STORAGE_DIR / "tmp"
    return os.listdir(tmp) if tmp.exists() else []
