"""FHIR R4 Consent resources (http://hl7.org/fhir/R4/consent.html) of consent records."""

from django.utils import timezone

from consent.models import Action, Scope

PRIVACY_SCOPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy",
                             "display": "Privacy Consent"}]}
CATEGORY = [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}]
POLICY_RULE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]}


def _instant(value) -> str | None:
    return value.isoformat() if value else None


def consent_resource(consent, base: str = "") -> dict:
    now = timezone.now()
    status = "active" if consent.is_active(now) else "inactive"
    actors = []
    if consent.scope == Scope.HOSPITAL:
        actors.append({"role": _recipient(), "reference": {"identifier": {
            "system": "urn:exchange:hospital", "value": consent.hospital.code}, "display": consent.hospital.name}})
    elif consent.scope == Scope.CLINICIAN:
        actors.append({"role": _recipient(), "reference": {"identifier": {
            "system": "urn:exchange:user", "value": consent.clinician.get_username()}}})
    provision = {"type": "permit" if consent.action == Action.PERMIT else "deny",
                 "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]}
    period = {k: v for k, v in (("start", _instant(consent.created_at)), ("end", _instant(consent.revoked_at or consent.expires_at))) if v}
    provision["period"] = period
    if actors:
        provision["actor"] = actors
    if consent.modalities:
        provision["class"] = [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": m} for m in sorted(consent.modality_set)]
    if consent.date_from or consent.date_to:
        provision["dataPeriod"] = {k: v.isoformat() for k, v in (("start", consent.date_from), ("end", consent.date_to)) if v}
    if consent.study_id:
        provision["data"] = [{"meaning": "instance", "reference": {"identifier": {
            "system": "urn:dicom:uid", "value": f"urn:oid:{consent.study.study_instance_uid}"}}}]
    return {
        "resourceType": "Consent",
        "id": str(consent.pk),
        "meta": {"versionId": str(consent.versions.count() or 1)},
        "status": status,
        "scope": PRIVACY_SCOPE,
        "category": CATEGORY,
        "patient": {"reference": f"Patient/{consent.patient.enterprise_id}"},
        "dateTime": _instant(consent.created_at),
        "policyRule": POLICY_RULE,
        "provision": provision,
        "extension": [{"url": "urn:exchange:consent-scope", "valueCode": consent.scope}],
    }


def _recipient() -> dict:
    return {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP",
                        "display": "information recipient"}]}


def bundle(consents, base: str = "") -> dict:
    entries = [{"fullUrl": f"{base}/Consent/{c.pk}", "resource": consent_resource(c, base)} for c in consents]
    return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}
