"""FHIR R4 Consent search for the patient themself and regulators (oversight)."""

import uuid

from django.db import transaction
from rest_framework.response import Response
from rest_framework.views import APIView

from audit import record
from audit.models import Event, Outcome
from consent import policy
from consent.api import fhir
from consent.models import Consent
from exchange.mpi.models import Patient


def _outcome(status: int, text: str) -> Response:
    return Response({"resourceType": "OperationOutcome",
                     "issue": [{"severity": "error", "code": "forbidden" if status == 403 else "invalid", "diagnostics": text}]},
                    status=status, content_type="application/fhir+json")


class ConsentSearchView(APIView):
    """GET /api/consent/Consent?patient=<enterprise id>: the patient's consents as a Bundle."""

    def get(self, request):
        raw = (request.query_params.get("patient") or "").removeprefix("Patient/")
        try:
            enterprise_id = uuid.UUID(raw)
        except ValueError:
            return _outcome(400, "patient=<enterprise id> is required")
        patient = Patient.objects.filter(enterprise_id=enterprise_id).first()
        purpose = policy.purpose_for(request.user)
        decision = policy.decide(request.user, patient, purpose) if patient else None
        if decision is None or not decision.allowed or decision.basis not in (policy.Basis.PATIENT_SELF, policy.Basis.OVERSIGHT):
            # Same answer for an unknown patient and a refused one: ids are not probed.
            with transaction.atomic():
                record(Event.ACCESS_DENIED, request.user, Outcome.MINOR_FAILURE, patient=patient, purpose=purpose,
                       details={"path": request.path, "reason": decision.reason if decision and not decision.allowed
                                else "consent records are for the patient and regulators" if decision else "unknown patient"})
            return _outcome(403, "access denied: only the patient and regulators read consent records")
        consents = list(Consent.objects.filter(patient=patient).select_related("hospital", "clinician", "study", "patient"))
        with transaction.atomic():
            record(Event.PATIENT_RECORD, request.user, patient=patient, purpose=purpose, basis=decision.basis,
                   details={"path": request.path, "action": "consent_export", "results": len(consents)})
        return Response(fhir.bundle(consents, request.build_absolute_uri("/api/consent").rstrip("/")),
                        content_type="application/fhir+json")
