"""Federated search API: GET /api/federation/search?patient=...&refresh=1 (issue #6).

Thin: parse, call exchange.federation.search.federated_search (which reads through
consent.policy and writes the audit events), answer. An unknown patient and one the caller may
not see get the same 404, as in PIX (exchange/mpi/api/views.py).
"""

from django.db import transaction
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from audit import record
from audit.models import Event, Outcome
from exchange.federation.search import FederatedResult, PatientNotVisible, federated_search, patient_lookup

NOT_FOUND = "no patient with this identifier that you may see"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}


def study_json(study, result: FederatedResult) -> dict:
    """The fields the viewer's search page and QIDO-RS show for a study, plus where it comes from."""
    return {
        "study_instance_uid": study.study_instance_uid,
        "study_date": study.study_date.isoformat() if study.study_date else None,
        "study_time": study.study_time,
        "accession_number": study.accession_number,
        "study_id": study.study_id,
        "description": study.description,
        "modalities": [m for m in study.modalities.split("\\") if m],
        "patient_name": study.patient_name_display,
        "patient_id": study.dicom_patient_id,
        "issuer_of_patient_id": study.issuer_of_patient_id,
        "patient_birth_date": study.patient_birth_date.isoformat() if study.patient_birth_date else None,
        "patient_sex": study.patient_sex,
        "num_series": study.num_series,
        "num_instances": study.num_instances,
        "hospital": {"code": study.hospital.code, "name": study.hospital.name},
        "availability": study.availability,
        "freshness": result.freshness_of(study),
        "viewer_url": reverse("study", args=[study.pk]),
        "retrieve_url": f"/dicomweb/studies/{study.study_instance_uid}",
    }


class FederatedSearchView(APIView):
    @extend_schema(
        operation_id="federation_search",
        summary="Federated search: a patient's studies from the index, optionally refreshed from the live archives",
        description="Answers from the central index at once. With refresh=1, first asks every live archive of the "
        "patient's hospitals in parallel (QIDO-RS or C-FIND), each within its own timeout capped by "
        "EXCHANGE_FEDERATED_SEARCH_TIMEOUT; the answer comes back within about that time even when an archive "
        "hangs. `archives` lists each archive's status (answered, timeout, failed, skipped) and how fresh its "
        "part of the answer is. Only studies the caller may see (consent policy). Unknown patient, or one the "
        "caller may not see: 404.",
        parameters=[
            OpenApiParameter("patient", OpenApiTypes.STR, required=True,
                             description="enterprise id (UUID), or <assigning authority>|<local id>, or a local id "
                             "with issuer=", examples=[OpenApiExample("local id", value="PPH-MRN|PPH0001")]),
            OpenApiParameter("issuer", OpenApiTypes.STR, description="assigning authority of a local id given as patient"),
            OpenApiParameter("refresh", OpenApiTypes.BOOL, description="1: refresh from the live archives first"),
        ],
        responses={200: OpenApiTypes.OBJECT, 400: OpenApiTypes.OBJECT, 404: OpenApiTypes.OBJECT},
        tags=["federation"],
    )
    def get(self, request):
        q = request.query_params
        refresh = q.get("refresh", "").strip().lower()
        if refresh not in _TRUE | _FALSE:
            return Response({"detail": "refresh must be 1 or 0"}, status=status.HTTP_400_BAD_REQUEST)
        try:
            patient = patient_lookup(q.get("patient", ""), q.get("issuer", ""))
        except ValueError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        if patient is None:
            with transaction.atomic():
                record(Event.QUERY, request.user, Outcome.MINOR_FAILURE,
                       details={"action": "federated_search", "channel": "api", "found": False})
            return Response({"detail": NOT_FOUND}, status=status.HTTP_404_NOT_FOUND)
        try:
            result = federated_search(request.user, patient, refresh=refresh in _TRUE, channel="api")
        except PatientNotVisible:
            return Response({"detail": NOT_FOUND}, status=status.HTTP_404_NOT_FOUND)
        return Response({
            "patient": str(result.patient.enterprise_id),
            "refreshed": result.refreshed,
            "elapsed_ms": result.elapsed_ms,
            "studies": [study_json(s, result) for s in result.studies],
            "archives": [a.as_dict() for a in result.archives],
        })
