"""FHIR R4 Patient <-> the patient index (identity feed, PDQ answers, $match).

Names (docs/decisions/0009-mpi-records.md): one HumanName per DICOM PN group, marked with the
standard extension ``iso21090-EN-representation`` — ``IDE`` for hanzi (ideographic), ``ABC`` for
pinyin (alphabetic), ``SYL`` for the phonetic group. On input the extension is optional: a
name whose family/given (or text) holds hanzi is ideographic, otherwise alphabetic. Family and
given go to the PN components ``family^given``; a hanzi ``text`` without components is taken
whole (the matcher splits the surname off).

Identifiers: the hospital's local id has system = the hospital's assigning authority; the
Resident Identity Card number has system ``urn:oid:2.16.156.10011.1.5`` (or ``RIC``). Answers
carry the enterprise id as ``urn:uuid:`` identifier and the identity card number only masked.
"""

from datetime import date

from exchange.mpi.models import Patient, mask_phone, mask_ric
from exchange.mpi.normalize import has_hanzi
from exchange.mpi.services import Demographics

RIC_SYSTEM = "urn:oid:2.16.156.10011.1.5"
RIC_SYSTEMS = {RIC_SYSTEM, "RIC", "2.16.156.10011.1.5"}
ENTERPRISE_SYSTEM = "urn:ietf:rfc:3986"
REPRESENTATION = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"
MASKED = "https://exchange.example/fhir/StructureDefinition/masked"
MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"
GENDER_TO_SEX = {"male": "M", "female": "F", "other": "O", "unknown": ""}
SEX_TO_GENDER = {"M": "male", "F": "female", "O": "other"}


class FhirError(ValueError):
    """The resource is malformed; the message is fit to show the sender (no patient data)."""


def _list(resource: dict, key: str) -> list:
    value = resource.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise FhirError(f"Patient.{key} must be an array of objects")
    return value


def _text(value, what: str, limit: int = 200) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FhirError(f"{what} must be a string")
    return value.strip()[:limit]


def _representation(name: dict) -> str:
    for ext in name.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == REPRESENTATION:
            return str(ext.get("valueCode") or "").upper()
    return ""


def _names(resource: dict) -> tuple[str, str, str]:
    groups = {"ABC": "", "IDE": "", "SYL": ""}
    for name in _list(resource, "name"):
        family = _text(name.get("family"), "HumanName.family")
        given = name.get("given") or []
        if not isinstance(given, list) or not all(isinstance(g, str) for g in given):
            raise FhirError("HumanName.given must be an array of strings")
        given_text = " ".join(g.strip() for g in given if g.strip())
        text = _text(name.get("text"), "HumanName.text")
        pn = family + ("^" + given_text if given_text else "") if family else ("^" + given_text if given_text else "")
        kind = _representation(name)
        if kind not in groups:
            if text and has_hanzi(text) and not has_hanzi(pn):
                # One HumanName: text in hanzi, family/given in pinyin.
                groups["IDE"] = groups["IDE"] or text
                groups["ABC"] = groups["ABC"] or pn
                continue
            kind = "IDE" if has_hanzi(pn or text) else "ABC"
        value = pn or text
        if value and not groups[kind]:
            groups[kind] = value
    return groups["ABC"][:200], groups["IDE"][:200], groups["SYL"][:200]


def _birth_date(resource: dict) -> date | None:
    value = resource.get("birthDate")
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise FhirError("Patient.birthDate must be a string YYYY-MM-DD")
    try:
        return date.fromisoformat(value) if len(value) == 10 else None
    except ValueError:
        raise FhirError("Patient.birthDate is not a valid date (YYYY-MM-DD)") from None


def patient_demographics(resource, *, authority: str | None, local_id: str | None = None) -> Demographics:
    """Demographics from a FHIR Patient. ``authority``: the system of the caller's local ids
    (None: no local id needed, as in $match). ``local_id`` from the URL of an update."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
        raise FhirError("the body must be a FHIR R4 Patient resource (resourceType 'Patient')")
    ric = None
    found_local = None
    other = []
    for ident in _list(resource, "identifier"):
        system = _text(ident.get("system"), "Identifier.system", 200)
        value = _text(ident.get("value"), "Identifier.value", 64)
        if not value:
            continue
        if system in RIC_SYSTEMS:
            ric = ric or value
        elif authority is not None and system == authority:
            found_local = found_local or value
        else:
            other.append((system[:64], value))
    if local_id is not None:
        if found_local and found_local != local_id:
            raise FhirError("the local identifier in the body differs from the one in the URL")
        found_local = local_id
    if authority is not None and not found_local:
        raise FhirError(f"an identifier with system '{authority}' (your hospital's assigning authority) is required")
    gender = resource.get("gender") or ""
    if gender not in GENDER_TO_SEX:
        raise FhirError("Patient.gender must be male, female, other or unknown")
    phone = None
    for telecom in _list(resource, "telecom"):
        if telecom.get("system") == "phone" and telecom.get("value"):
            phone = _text(telecom.get("value"), "ContactPoint.value", 64)
            break
    alphabetic, ideographic, phonetic = _names(resource)
    return Demographics(
        local_id=found_local or "", issuer=authority or "", name_alphabetic=alphabetic,
        name_ideographic=ideographic, name_phonetic=phonetic, birth_date=_birth_date(resource),
        sex=GENDER_TO_SEX[gender], ric=ric, phone=phone, other_ids=tuple(other[:20]),
    )


def _human_name(pn: str, code: str, use: str) -> dict:
    family, _, given = pn.partition("^")
    name = {"use": use, "extension": [{"url": REPRESENTATION, "valueCode": code}]}
    if not given and code == "IDE" and family:
        name["text"] = family
        return name
    name["text"] = (family + given.replace("^", "")) if code == "IDE" else " ".join(p for p in (family, given.replace("^", " ")) if p)
    if family:
        name["family"] = family
    if given:
        name["given"] = [g for g in given.split("^") if g][:2]
    return name


def patient_resource(patient: Patient, identifiers: list) -> dict:
    """A FHIR Patient for an enterprise patient and the identifiers the caller may see (each with
    hospital loaded). Numbers appear only masked."""
    main = next((i for i in identifiers), None)
    alphabetic = patient.name_alphabetic or (main.name_alphabetic if main else "")
    ideographic = patient.name_ideographic or (main.name_ideographic if main else "")
    phonetic = main.name_phonetic if main else ""
    resource = {
        "resourceType": "Patient",
        "id": str(patient.enterprise_id),
        "identifier": [{"use": "official", "system": ENTERPRISE_SYSTEM, "value": f"urn:uuid:{patient.enterprise_id}"}],
        "active": patient.merged_into_id is None,
    }
    ric = phone = None
    for ident in identifiers:
        resource["identifier"].append({"use": "usual", "system": ident.hospital.assigning_authority, "value": ident.local_id,
                                       "assigner": {"display": ident.hospital.code}})
        ric = ric or ident.get_ric()
        phone = phone or ident.get_phone()
    if ric:
        resource["identifier"].append({"system": RIC_SYSTEM, "value": mask_ric(ric),
                                       "extension": [{"url": MASKED, "valueBoolean": True}]})
    names = []
    if ideographic:
        names.append(_human_name(ideographic, "IDE", "official"))
    if alphabetic:
        names.append(_human_name(alphabetic, "ABC", "official" if not ideographic else "usual"))
    if phonetic:
        names.append(_human_name(phonetic, "SYL", "usual"))
    if names:
        resource["name"] = names
    birth = patient.birth_date or (main.birth_date if main else None)
    if birth:
        resource["birthDate"] = birth.isoformat()
    sex = patient.sex or (main.sex if main else "")
    resource["gender"] = SEX_TO_GENDER.get(sex, "unknown")
    if phone:
        resource["telecom"] = [{"system": "phone", "value": mask_phone(phone),
                                "extension": [{"url": MASKED, "valueBoolean": True}]}]
    if patient.merged_into_id:
        resource["link"] = [{"other": {"reference": f"Patient/{patient.merged_into.enterprise_id}"}, "type": "replaced-by"}]
    return resource


def bundle(entries: list[dict], base: str) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(entries),
        "entry": [
            {"fullUrl": f"{base}/{e['resource']['id']}", "resource": e["resource"], "search": e["search"]}
            for e in entries
        ],
    }


def operation_outcome(message: str, code: str = "invalid") -> dict:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": message}]}


def match_parameters(body) -> tuple[dict, int, bool]:
    """(Patient resource, count, onlyCertainMatches) of a $match Parameters body."""
    if isinstance(body, dict) and body.get("resourceType") == "Patient":
        return body, 10, False
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise FhirError("the body must be a FHIR Parameters resource with a 'resource' parameter")
    resource, count, certain = None, 10, False
    params = body.get("parameter") or []
    if not isinstance(params, list):
        raise FhirError("Parameters.parameter must be an array")
    for p in params:
        if not isinstance(p, dict):
            raise FhirError("Parameters.parameter must hold objects")
        if p.get("name") == "resource":
            resource = p.get("resource")
        elif p.get("name") == "count":
            count = p.get("valueInteger")
            if not isinstance(count, int) or count < 1:
                raise FhirError("count must be a positive integer")
        elif p.get("name") == "onlyCertainMatches":
            certain = bool(p.get("valueBoolean"))
    if resource is None:
        raise FhirError("the 'resource' parameter (a Patient) is required")
    return resource, min(count, 50), certain
