"""Reading and validating one received DICOM Part 10 file without loading its pixels."""

import os
import re
from dataclasses import dataclass, field
from enum import IntEnum

import pydicom
from pydicom import config as pydicom_config
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from exchange.mpi.identity import RIC_ISSUERS, clean_ric, parse_da

# ISO 2022 escape sequences (ESC, intermediates 0x20-0x2F, final 0x30-0x7E; PS3.5 §6.1.2.5.3).
# pydicom decodes ISO 2022 IR 58 (GB2312) with Python's gb2312 codec, which leaves them in.
ESCAPE_RE = re.compile(r"\x1b[\x20-\x2f]*[\x30-\x7e]")
UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
STANDARD_ROOT = "1.2.840.10008."
PIXEL_DATA = 0x7FE00010
# Item and Sequence Delimitation tags of encapsulated pixel data (PS3.5 §A.4).
ITEM = b"\xfe\xff\x00\xe0"
SEQ_DELIMITER = b"\xfe\xff\xdd\xe0"


# pydicom re-validates every value it reads against its VR (regexes, lengths) and warns; we
# validate what we rely on ourselves (UIDs, PatientID, structure) and refuse on that, so the
# per-value check is work without effect. Writing (tests, fixtures) keeps its validation.
pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE


class FailureReason(IntEnum):
    """STOW-RS failure reasons (PS3.18 §10.5.3 Table 10.5.3-2; codes from PS3.4 Annex B)."""

    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122


class Rejected(Exception):
    def __init__(self, reason: FailureReason, message: str, sop_class_uid: str = "", sop_instance_uid: str = ""):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid


@dataclass
class Parsed:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient_id: str
    issuer_of_patient_id: str
    name_alphabetic: str
    name_ideographic: str
    name_phonetic: str
    birth_date: object
    sex: str
    ric: str | None
    study: dict = field(default_factory=dict)
    series: dict = field(default_factory=dict)
    instance: dict = field(default_factory=dict)
    # For the patient index: PatientTelephoneNumbers (first value), the identity card number as
    # sent even if invalid (flagged, never trusted), OtherPatientIDsSequence as (issuer, id) pairs.
    phone: str = ""
    ric_raw: str = ""
    other_ids: tuple = ()


def clean_text(value) -> str:
    return ESCAPE_RE.sub("", str(value or "")).strip()


def _text(ds, keyword: str, limit: int = 200) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    return clean_text(value)[:limit]


def study_fields(ds) -> dict:
    """Study-level attributes the index keeps, from any data set (a file, a QIDO answer)."""
    return {
        "study_date": parse_da(ds.get("StudyDate")),
        "study_time": _text(ds, "StudyTime", 16),
        "accession_number": _text(ds, "AccessionNumber", 64),
        "study_id": _text(ds, "StudyID", 16),
        "description": _text(ds, "StudyDescription"),
        "referring_physician_name": _text(ds, "ReferringPhysicianName"),
    }


def name_groups(ds) -> tuple[str, str, str]:
    """PatientName's alphabetic, ideographic and phonetic groups, escapes stripped."""
    name = ds.get("PatientName")
    if name is None or not str(name):
        return "", "", ""
    return clean_text(name.alphabetic)[:200], clean_text(name.ideographic)[:200], clean_text(name.phonetic)[:200]




def _int(ds, keyword: str):
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


# Public names of the readers, for other readers of data sets (federation sync).
text_of = _text
int_of = _int


def _uid(ds, keyword: str, *, sop_class="", sop_instance="") -> str:
    value = str(ds.get(keyword) or "").strip().rstrip("\0")
    if not value:
        raise Rejected(FailureReason.DATASET_DOES_NOT_MATCH, f"{keyword} is missing", sop_class, sop_instance)
    if len(value) > 64 or not UID_RE.match(value):
        raise Rejected(FailureReason.DATASET_DOES_NOT_MATCH, f"{keyword} is not a valid UID", sop_class, sop_instance)
    return value


def is_storage_sop_class(uid: str) -> bool:
    if not uid.startswith(STANDARD_ROOT):
        return True  # private SOP classes are stored as they are
    u = UID(uid)
    return u.type == "SOP Class" and ("Storage" in u.name or "Stored Print" in u.name)


def ric_from(ds) -> str | None:
    for item in ds.get("OtherPatientIDsSequence") or []:
        issuer = str(item.get("IssuerOfPatientID") or "").strip().upper()
        number = clean_ric(item.get("PatientID"))
        if number and (issuer in RIC_ISSUERS or not issuer):
            return number
    return clean_ric(ds.get("PatientID"))


def _other_ids(ds) -> tuple:
    out = []
    for item in ds.get("OtherPatientIDsSequence") or []:
        value = clean_text(item.get("PatientID"))[:64]
        if value:
            out.append((clean_text(item.get("IssuerOfPatientID"))[:64], value))
    return tuple(out[:20])


def _ric_raw(other_ids: tuple) -> str:
    return next((value for issuer, value in other_ids if issuer.upper() in RIC_ISSUERS), "")


def _phone(ds) -> str:
    value = ds.get("PatientTelephoneNumbers")
    values = list(value) if isinstance(value, pydicom.multival.MultiValue) else [value]
    return next((clean_text(v)[:64] for v in values if clean_text(v)), "")


def _check_pixel_data(ds, path: str, size: int) -> tuple[int | None, int | None]:
    raw = ds._dict.get(PIXEL_DATA)
    if raw is None:
        return None, None
    offset = getattr(raw, "value_tell", None)
    length = getattr(raw, "length", None)
    if offset is None:
        return None, None
    if length != 0xFFFFFFFF:
        if offset + length > size:
            raise Rejected(FailureReason.CANNOT_UNDERSTAND, "file is truncated inside Pixel Data")
        return offset, length
    # Encapsulated: walk the items to the Sequence Delimitation Item to prove the file is whole.
    with open(path, "rb") as fp:
        fp.seek(offset)
        while True:
            header = fp.read(8)
            if len(header) < 8:
                raise Rejected(FailureReason.CANNOT_UNDERSTAND, "file is truncated inside encapsulated Pixel Data")
            tag, item_length = header[:4], int.from_bytes(header[4:], "little")
            if tag == SEQ_DELIMITER:
                return offset, None
            if tag != ITEM or fp.tell() + item_length > size:
                raise Rejected(FailureReason.CANNOT_UNDERSTAND, "encapsulated Pixel Data is malformed or truncated")
            fp.seek(item_length, os.SEEK_CUR)


def _check_complete(ds, path: str, size: int) -> None:
    """pydicom stops quietly where a file ends mid-element; the last element must end at EOF."""
    if not ds._dict:
        raise Rejected(FailureReason.CANNOT_UNDERSTAND, "file holds no data set")
    last = ds._dict[max(ds._dict)]
    tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
    if tell is None or length is None or length == 0xFFFFFFFF:
        return
    end = tell + length
    if end > size:
        raise Rejected(FailureReason.CANNOT_UNDERSTAND, "file is truncated (last element runs past the end)")
    if end < size:
        with open(path, "rb") as fp:
            fp.seek(end)
            rest = fp.read(64 * 1024)
        if rest.strip(b"\0"):
            raise Rejected(FailureReason.CANNOT_UNDERSTAND, "file is truncated or has unreadable data after the last element")


def parse(path: str) -> Parsed:
    """Parse and validate one spooled file. Raises Rejected with a reason fit to show the sender
    (it never contains patient data)."""
    size = os.path.getsize(path)
    with open(path, "rb") as fp:
        head = fp.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        raise Rejected(FailureReason.CANNOT_UNDERSTAND, "not a DICOM Part 10 file (no DICM prefix)")
    try:
        ds = pydicom.dcmread(path, defer_size=4096)
        meta_ts = str(ds.file_meta.get("TransferSyntaxUID") or "")
        _check_complete(ds, path, size)
        pixel_offset, pixel_length = _check_pixel_data(ds, path, size)
        # Convert every other element now so encoding errors surface here, not later; Pixel Data
        # stays deferred (converting it would read it into memory).
        for tag in list(ds._dict):
            if tag != PIXEL_DATA:
                elem = ds[tag]
                if elem.VR == "SQ":
                    for item in elem.value:
                        for _ in item.iterall():
                            pass
    except Rejected:
        raise
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, NotImplementedError, LookupError) as exc:
        raise Rejected(FailureReason.CANNOT_UNDERSTAND, f"cannot be parsed as DICOM ({type(exc).__name__})") from None
    except Exception as exc:  # pydicom raises a variety of errors for corrupt data
        raise Rejected(FailureReason.CANNOT_UNDERSTAND, f"cannot be parsed as DICOM ({type(exc).__name__})") from None

    sop_class = str(ds.get("SOPClassUID") or "")[:64]
    sop_instance = str(ds.get("SOPInstanceUID") or "")[:64]
    sop_class = _uid(ds, "SOPClassUID", sop_class=sop_class, sop_instance=sop_instance)
    sop_instance = _uid(ds, "SOPInstanceUID", sop_class=sop_class, sop_instance=sop_instance)
    study_uid = _uid(ds, "StudyInstanceUID", sop_class=sop_class, sop_instance=sop_instance)
    series_uid = _uid(ds, "SeriesInstanceUID", sop_class=sop_class, sop_instance=sop_instance)
    if not meta_ts or not UID_RE.match(meta_ts):
        raise Rejected(FailureReason.CANNOT_UNDERSTAND, "file meta has no valid TransferSyntaxUID", sop_class, sop_instance)
    if not is_storage_sop_class(sop_class):
        raise Rejected(FailureReason.SOP_CLASS_NOT_SUPPORTED, "SOP class is not a storage SOP class", sop_class, sop_instance)
    patient_id = _text(ds, "PatientID", 64)
    if not patient_id:
        raise Rejected(FailureReason.DATASET_DOES_NOT_MATCH, "PatientID is missing", sop_class, sop_instance)

    alphabetic, ideographic, phonetic = name_groups(ds)
    sex = _text(ds, "PatientSex", 1).upper()
    other_ids = _other_ids(ds)
    return Parsed(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        transfer_syntax_uid=meta_ts,
        patient_id=patient_id,
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID", 64),
        name_alphabetic=alphabetic,
        name_ideographic=ideographic,
        name_phonetic=phonetic,
        birth_date=parse_da(ds.get("PatientBirthDate")),
        sex=sex if sex in ("M", "F", "O") else "",
        ric=ric_from(ds),
        phone=_phone(ds),
        ric_raw=_ric_raw(other_ids),
        other_ids=other_ids,
        study=study_fields(ds),
        series={
            "modality": _text(ds, "Modality", 16),
            "series_number": _int(ds, "SeriesNumber"),
            "description": _text(ds, "SeriesDescription"),
            "body_part": _text(ds, "BodyPartExamined", 64),
        },
        instance={
            "instance_number": _int(ds, "InstanceNumber"),
            "rows": _int(ds, "Rows"),
            "columns": _int(ds, "Columns"),
            "number_of_frames": _int(ds, "NumberOfFrames") or 1,
            "pixel_data_offset": pixel_offset,
            "pixel_data_length": pixel_length,
        },
    )
