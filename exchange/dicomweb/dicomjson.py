"""DICOM JSON model (PS3.18 §F.2) for QIDO-RS answers built from the index."""

from datetime import date


def _da(value: date | None):
    return value.strftime("%Y%m%d") if value else None


def attr(vr: str, value=None) -> dict:
    """One attribute; None or "" gives an attribute without Value (present, zero length)."""
    if value is None or value == "" or value == []:
        return {"vr": vr}
    return {"vr": vr, "Value": value if isinstance(value, list) else [value]}


def person_name(alphabetic: str, ideographic: str = "", phonetic: str = "") -> dict:
    groups = {k: v for k, v in (("Alphabetic", alphabetic), ("Ideographic", ideographic), ("Phonetic", phonetic)) if v}
    return {"vr": "PN", "Value": [groups]} if groups else {"vr": "PN"}


# The Study fields study_attributes reads: a search loads only these (QuerySet.only).
STUDY_FIELDS = ("study_instance_uid", "study_date", "study_time", "accession_number", "modalities",
                "referring_physician_name", "description", "patient_name_alphabetic", "patient_name_ideographic",
                "patient_name_phonetic", "dicom_patient_id", "issuer_of_patient_id", "patient_birth_date",
                "patient_sex", "study_id", "num_series", "num_instances")


def study_attributes(study, base_url: str) -> dict:
    """Study-level attributes (PS3.18 §10.6.3.3.1 Table 10.6.3-3)."""
    return {
        "00080005": attr("CS", "ISO_IR 192"),
        "00080020": attr("DA", _da(study.study_date)),
        "00080030": attr("TM", study.study_time),
        "00080050": attr("SH", study.accession_number),
        "00080061": attr("CS", [m for m in study.modalities.split("\\") if m]),
        "00080090": person_name(*study.referring_physician_name.split("=")[:3]),
        "00081030": attr("LO", study.description),
        "00081190": attr("UR", f"{base_url}/studies/{study.study_instance_uid}"),
        "00100010": person_name(study.patient_name_alphabetic, study.patient_name_ideographic, study.patient_name_phonetic),
        "00100020": attr("LO", study.dicom_patient_id),
        "00100021": attr("LO", study.issuer_of_patient_id),
        "00100030": attr("DA", _da(study.patient_birth_date)),
        "00100040": attr("CS", study.patient_sex),
        "0020000D": attr("UI", study.study_instance_uid),
        "00200010": attr("SH", study.study_id),
        "00201206": attr("IS", study.num_series),
        "00201208": attr("IS", study.num_instances),
    }


def series_attributes(series, base_url: str) -> dict:
    """Series-level attributes (PS3.18 §10.6.3.3.2 Table 10.6.3-4)."""
    study = series.study
    return {
        "00080005": attr("CS", "ISO_IR 192"),
        "00080060": attr("CS", series.modality),
        "0008103E": attr("LO", series.description),
        "00081190": attr("UR", f"{base_url}/studies/{study.study_instance_uid}/series/{series.series_instance_uid}"),
        "00180015": attr("CS", series.body_part),
        "0020000D": attr("UI", study.study_instance_uid),
        "0020000E": attr("UI", series.series_instance_uid),
        "00200011": attr("IS", series.series_number),
        "00201209": attr("IS", series.num_instances),
    }


def instance_attributes(instance, base_url: str) -> dict:
    """Instance-level attributes (PS3.18 §10.6.3.3.3 Table 10.6.3-5)."""
    series = instance.series
    study = series.study
    return {
        "00080016": attr("UI", instance.sop_class_uid),
        "00080018": attr("UI", instance.sop_instance_uid),
        "00083002": attr("UI", instance.transfer_syntax_uid),
        "00081190": attr(
            "UR",
            f"{base_url}/studies/{study.study_instance_uid}/series/{series.series_instance_uid}"
            f"/instances/{instance.sop_instance_uid}",
        ),
        "0020000D": attr("UI", study.study_instance_uid),
        "0020000E": attr("UI", series.series_instance_uid),
        "00200013": attr("IS", instance.instance_number),
        "00280008": attr("IS", instance.number_of_frames),
        "00280010": attr("US", instance.rows),
        "00280011": attr("US", instance.columns),
    }
