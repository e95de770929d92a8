"""QIDO-RS query parameters (PS3.18 §8.3.4, §10.6.1) to index filters.

Matching follows PS3.4 C.2.2.2: single value, list of UIDs, wildcard (``*``/``?``) for
PatientName, AccessionNumber and descriptions, and date ranges ``YYYYMMDD-YYYYMMDD``.
"""

import re
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import Q

from exchange.mpi.identity import parse_da
from exchange.studies.models import Series
from exchange.studies.names import wildcard_regex


class QueryError(ValueError):
    pass


# Keyword and tag forms of every attribute the index can match on.
KEYWORDS = {
    "00100010": "PatientName",
    "00100020": "PatientID",
    "00100021": "IssuerOfPatientID",
    "00100030": "PatientBirthDate",
    "00100040": "PatientSex",
    "00080020": "StudyDate",
    "00080050": "AccessionNumber",
    "00080061": "ModalitiesInStudy",
    "0020000D": "StudyInstanceUID",
    "00200010": "StudyID",
    "00081030": "StudyDescription",
    "0020000E": "SeriesInstanceUID",
    "00080060": "Modality",
    "00200011": "SeriesNumber",
    "00080018": "SOPInstanceUID",
    "00080016": "SOPClassUID",
    "00200013": "InstanceNumber",
}
CONTROL = {"limit", "offset", "includefield", "fuzzymatching", "orderby", "format"}


@dataclass
class Query:
    match: dict[str, str] = field(default_factory=dict)
    limit: int = 0
    offset: int = 0
    capped: bool = False


def parse(params) -> Query:
    q = Query()
    for key in params:
        values = params.getlist(key)
        value = ",".join(v for v in values if v)
        if key in CONTROL:
            continue
        keyword = KEYWORDS.get(key.upper(), key)
        if keyword in KEYWORDS.values():
            q.match[keyword] = value.strip()
        # Unknown attributes are ignored, as PS3.18 §8.3.4.1 allows.
    max_limit = settings.QIDO_MAX_LIMIT
    try:
        limit = int(params.get("limit") or max_limit)
        offset = int(params.get("offset") or 0)
    except ValueError:
        raise QueryError("limit and offset must be whole numbers") from None
    if limit < 1 or offset < 0:
        raise QueryError("limit must be positive and offset must not be negative")
    q.capped = limit > max_limit
    q.limit, q.offset = min(limit, max_limit), offset
    return q


def _uid_list(value: str) -> list[str]:
    uids = [u.strip() for u in re.split(r"[\\,]", value) if u.strip()]
    for uid in uids:
        if len(uid) > 64 or not re.match(r"^[0-9.]+$", uid):
            raise QueryError("a UID query value is not a valid UID")
    return uids


def _date_range(value: str, name: str) -> Q:
    if "-" not in value:
        d = parse_da(value)
        if d is None:
            raise QueryError(f"{name} must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
        return Q(**{name: d})
    start, _, end = value.partition("-")
    lo, hi = parse_da(start) if start else None, parse_da(end) if end else None
    if (start and lo is None) or (end and hi is None) or (lo is None and hi is None):
        raise QueryError(f"{name} must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    cond = Q()
    if lo:
        cond &= Q(**{f"{name}__gte": lo})
    if hi:
        cond &= Q(**{f"{name}__lte": hi})
    return cond


def _text(value: str, name: str) -> Q:
    if "*" in value or "?" in value:
        regex = "^" + "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value) + "$"
        return Q(**{f"{name}__iregex": regex})
    return Q(**{f"{name}__iexact": value})


def study_filter(match: dict[str, str], prefix: str = "") -> Q:
    """Study-level conditions; ``prefix`` is the path to Study from the queried model."""
    p = prefix
    cond = Q()
    for keyword, value in match.items():
        if not value:
            continue
        if keyword == "PatientName":
            cond &= Q(**{f"{p}name_search__regex": wildcard_regex(value)})
        elif keyword == "PatientID":
            cond &= _text(value, f"{p}dicom_patient_id")
        elif keyword == "IssuerOfPatientID":
            cond &= Q(**{f"{p}issuer_of_patient_id": value})
        elif keyword == "PatientBirthDate":
            cond &= _date_range(value, f"{p}patient_birth_date")
        elif keyword == "PatientSex":
            cond &= Q(**{f"{p}patient_sex": value.upper()})
        elif keyword == "StudyDate":
            cond &= _date_range(value, f"{p}study_date")
        elif keyword == "AccessionNumber":
            cond &= _text(value, f"{p}accession_number")
        elif keyword == "StudyID":
            cond &= _text(value, f"{p}study_id")
        elif keyword == "StudyDescription":
            cond &= _text(value, f"{p}description")
        elif keyword == "StudyInstanceUID":
            cond &= Q(**{f"{p}study_instance_uid__in": _uid_list(value)})
        elif keyword == "ModalitiesInStudy":
            # A subquery, not a join on series: a join repeats a study once per matching series,
            # and the DISTINCT that undoes it makes PostgreSQL sort every match before LIMIT.
            modalities = [m.strip().upper() for m in re.split(r"[\\,]", value) if m.strip()]
            if modalities:
                series = Series.objects.filter(modality__in=modalities).values("study_id")
                cond &= Q(**{f"{p}pk__in": series})
    return cond


def series_filter(match: dict[str, str], prefix: str = "") -> Q:
    p = prefix
    cond = Q()
    for keyword, value in match.items():
        if not value:
            continue
        if keyword == "SeriesInstanceUID":
            cond &= Q(**{f"{p}series_instance_uid__in": _uid_list(value)})
        elif keyword == "Modality":
            cond &= Q(**{f"{p}modality": value.upper()})
        elif keyword == "SeriesNumber":
            try:
                cond &= Q(**{f"{p}series_number": int(value)})
            except ValueError:
                raise QueryError("SeriesNumber must be a whole number") from None
    return cond


def instance_filter(match: dict[str, str]) -> Q:
    cond = Q()
    for keyword, value in match.items():
        if not value:
            continue
        if keyword == "SOPInstanceUID":
            cond &= Q(sop_instance_uid__in=_uid_list(value))
        elif keyword == "SOPClassUID":
            cond &= Q(sop_class_uid__in=_uid_list(value))
        elif keyword == "InstanceNumber":
            try:
                cond &= Q(instance_number=int(value))
            except ValueError:
                raise QueryError("InstanceNumber must be a whole number") from None
    return cond
