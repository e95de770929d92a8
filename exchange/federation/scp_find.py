"""C-FIND on the platform index for the DIMSE SCP (PS3.4 C.4.1): Study Root (C.6.2) and Patient
Root (C.6.1) Query/Retrieve Information Models.

Matching reuses the QIDO-RS filters (exchange.dicomweb.query, PS3.4 C.2.2.2: single value,
UID list, wildcard, range), over the studies the caller may see (consent.policy.visible_studies).
Answers are built from the same index attributes as QIDO-RS answers (exchange.dicomweb.dicomjson)
and hold the keys the caller asked for, plus the unique keys of the level and those above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from django.db.models import Count, Max
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind

from consent import policy
from exchange.dicomweb import dicomjson, query
from exchange.studies.models import Instance, Series, Study

STUDY_ROOT = str(StudyRootQueryRetrieveInformationModelFind)
PATIENT_ROOT = str(PatientRootQueryRetrieveInformationModelFind)
MODEL_NAMES = {STUDY_ROOT: "study-root", PATIENT_ROOT: "patient-root"}
LEVELS = {STUDY_ROOT: ("STUDY", "SERIES", "IMAGE"), PATIENT_ROOT: ("PATIENT", "STUDY", "SERIES", "IMAGE")}
# Unique keys of each level and the levels above it (PS3.4 C.6.1.1, C.6.2.1).
UNIQUE = {
    "PATIENT": ["00100020"],
    "STUDY": ["0020000D"],
    "SERIES": ["0020000D", "0020000E"],
    "IMAGE": ["0020000D", "0020000E", "00080018"],
}
PATIENT_TAGS = ("00100010", "00100020", "00100021", "00100030", "00100040")
NUMBER_OF_PATIENT_RELATED_STUDIES = "00201200"
# Not matching keys: QueryRetrieveLevel, SpecificCharacterSet, RetrieveURL (it names a DICOMweb URL).
NOT_KEYS = {"00080052", "00080005"}
MATCHABLE = set(query.KEYWORDS.values())


class FindStatus(IntEnum):
    """C-FIND response statuses (PS3.4 C.4.1.1.4)."""

    SUCCESS = 0x0000
    CANCEL = 0xFE00
    PENDING = 0xFF00
    PENDING_OPTIONAL_KEYS_NOT_SUPPORTED = 0xFF01
    OUT_OF_RESOURCES = 0xA700
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    UNABLE_TO_PROCESS = 0xC000


class FindRefused(Exception):
    def __init__(self, status: FindStatus, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class FindAnswer:
    level: str
    match: dict[str, str]
    datasets: list[Dataset]
    # A key with a value the index cannot match on was ignored: answers are pending 0xFF01.
    unsupported_keys: bool


def _value(elem) -> str:
    """A matching key's value as QIDO-RS takes it (multiple values joined by backslash)."""
    value = elem.value
    if value is None or value == "":
        return ""
    if elem.VR == "PN":
        name = value[0] if isinstance(value, MultiValue) else value
        # One PN group is matched (the index folds hanzi, pinyin and case together).
        return str(name.alphabetic or name.ideographic or name.phonetic or "").strip() if name else ""
    if isinstance(value, MultiValue):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def matching_keys(identifier: Dataset) -> tuple[dict[str, str], bool]:
    """{keyword: value} of the keys with a value; and whether some such key was not matchable.
    Universal matching (empty value or ``*`` only, PS3.4 C.2.2.2.3) adds no condition."""
    match: dict[str, str] = {}
    unsupported = False
    for elem in identifier:
        if f"{elem.tag:08X}" in NOT_KEYS or elem.tag.is_private:
            continue
        if elem.VR == "SQ":
            unsupported = unsupported or any(len(item) for item in elem.value or [])
            continue
        value = _value(elem)
        if not value or set(value) == {"*"}:
            continue
        if elem.keyword in MATCHABLE:
            match[elem.keyword] = value
        else:
            unsupported = True
    return match, unsupported


def _study_attrs(study: Study) -> dict:
    attrs = dicomjson.study_attributes(study, "")
    attrs.pop("00081190", None)
    return attrs


def _series_attrs(series: Series) -> dict:
    attrs = {**_study_attrs(series.study), **dicomjson.series_attributes(series, "")}
    attrs.pop("00081190", None)
    return attrs


def _instance_attrs(instance: Instance) -> dict:
    attrs = {**_series_attrs(instance.series), **dicomjson.instance_attributes(instance, "")}
    attrs.pop("00081190", None)
    return attrs


def _patients(visible, match: dict, limit: int) -> list[dict]:
    groups = list(
        visible.filter(query.study_filter(match))
        .values("dicom_patient_id", "issuer_of_patient_id")
        .annotate(latest=Max("id"), studies=Count("id", distinct=True))
        .order_by("dicom_patient_id", "issuer_of_patient_id")[: limit + 1]
    )
    latest = Study.objects.in_bulk([g["latest"] for g in groups])
    out = []
    for group in groups:
        attrs = _study_attrs(latest[group["latest"]])
        patient = {tag: attrs[tag] for tag in PATIENT_TAGS}
        patient[NUMBER_OF_PATIENT_RELATED_STUDIES] = dicomjson.attr("IS", group["studies"])
        out.append(patient)
    return out


def _rows(actor, level: str, match: dict, limit: int) -> list[dict]:
    visible = policy.visible_studies(actor)
    if level == "PATIENT":
        return _patients(visible, match, limit)
    if level == "STUDY":
        # No DISTINCT: the filters join only along foreign keys (one study per row), as in QIDO-RS.
        studies = visible.filter(query.study_filter(match)).order_by("-study_date", "-id")
        return [_study_attrs(s) for s in studies[: limit + 1]]
    if level == "SERIES":
        cond = query.study_filter(match, "study__") & query.series_filter(match)
        series = (Series.objects.filter(study__in=visible).filter(cond).select_related("study")
                  .order_by("study_id", "series_number", "id"))
        return [_series_attrs(s) for s in series[: limit + 1]]
    cond = query.study_filter(match, "series__study__") & query.series_filter(match, "series__") & query.instance_filter(match)
    instances = (Instance.objects.filter(series__study__in=visible).filter(cond).select_related("series__study")
                 .order_by("series_id", "instance_number", "id"))
    return [_instance_attrs(i) for i in instances[: limit + 1]]


def _response(identifier: Dataset, model: str, level: str, attrs: dict) -> Dataset:
    """The answer's identifier: every key asked for (empty when the index has no such
    attribute), plus the unique keys of this level and the ones above (PS3.4 C.4.1.2.3.1)."""
    wanted: dict[str, dict] = {}
    for elem in identifier:
        tag = f"{elem.tag:08X}"
        if tag in NOT_KEYS or elem.tag.is_private or elem.tag.group == 0x0002:
            continue
        if tag in attrs:
            wanted[tag] = attrs[tag]
        elif elem.VR == "SQ":
            wanted[tag] = {"vr": "SQ", "Value": []}
        elif len(elem.VR) == 2 and elem.VR != "UN":
            wanted[tag] = {"vr": elem.VR}
    for tag in UNIQUE[level] + (["00100020"] if model == PATIENT_ROOT else []):
        wanted[tag] = attrs.get(tag) or {"vr": "LO"}
    ds = Dataset.from_json(wanted)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = level
    return ds


def find(actor, model: str, identifier: Dataset, limit: int) -> FindAnswer:
    """Answer one C-FIND for ``actor``. Raises FindRefused (status and a reason without patient
    data) for a level the model does not have, a malformed matching value, or too many matches."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in LEVELS.get(model, ()):
        raise FindRefused(FindStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                          f"QueryRetrieveLevel must be one of {', '.join(LEVELS.get(model, ()))}")
    match, unsupported = matching_keys(identifier)
    try:
        rows = _rows(actor, level, match, limit)
    except query.QueryError as exc:
        raise FindRefused(FindStatus.UNABLE_TO_PROCESS, str(exc)) from None
    if len(rows) > limit:
        # C-FIND cannot page: refuse rather than answer a silently truncated list.
        raise FindRefused(FindStatus.OUT_OF_RESOURCES, f"more than {limit} matches: narrow the query")
    return FindAnswer(level, match, [_response(identifier, model, level, attrs) for attrs in rows], unsupported)
