"""POST /api/federation/prefetch: a hospital system says an order or appointment arrived; the
platform warms its retrieve cache with the patient's earlier studies held by hospital archives
(exchange/federation/prefetch.py).

Who may call: an account of the ordering hospital — its clinicians, or its ingest/gateway
account (the RIS/HIS interface) — naming the patient by the ordering hospital's own local id.
Hospital admins, patients, regulators and other hospitals' accounts are refused (403, audited
as ACCESS_DENIED). The answer is the same 202 whether the patient has priors or not: the caller
learns nothing about other hospitals' studies; prefetch shows no data to anyone, every later read
goes through consent.policy. Unknown local id: 404 (no patient is created).
"""

from django.db import transaction
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from audit import record
from audit.models import Event, Outcome
from consent.policy import Purpose
from exchange.federation.prefetch import PrefetchReason
from exchange.mpi.models import PatientIdentifier
from hospitals.models import Role

TRIGGER_ROLES = {Role.CLINICIAN, Role.INGEST}
DESCRIPTION = __doc__
EXAMPLE = {"patient": {"identifier": "PPH0001", "hospital": "PPH"}, "modalities": ["CT"], "reason": "order",
           "since": "2020-01-01", "limit": 3}


class PatientRef(serializers.Serializer):
    identifier = serializers.CharField(max_length=64, help_text="the ordering hospital's local patient id")
    hospital = serializers.CharField(max_length=16, required=False, help_text="hospital code (default: the caller's)")
    issuer = serializers.CharField(max_length=64, required=False,
                                   help_text="assigning authority of the id (IssuerOfPatientID); the caller's own")


class PrefetchInput(serializers.Serializer):
    patient = PatientRef()
    modalities = serializers.ListField(child=serializers.RegexField(r"^[A-Za-z]{2,16}$"), required=False, max_length=20)
    since = serializers.DateField(required=False)
    until = serializers.DateField(required=False)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=50)
    reason = serializers.ChoiceField(choices=PrefetchReason.values, default=PrefetchReason.ORDER.value)


def _patient(ident):
    patient = ident.patient
    seen = set()
    while patient.merged_into_id and patient.pk not in seen:  # a merged record answers for the survivor
        seen.add(patient.pk)
        patient = type(patient).objects.get(pk=patient.merged_into_id)
    return patient


class PrefetchView(APIView):
    @extend_schema(
        operation_id="federation_prefetch",
        summary="Prefetch of priors: warm the retrieve cache when an order or appointment arrives",
        description=DESCRIPTION,
        request=PrefetchInput,
        examples=[OpenApiExample("order", value=EXAMPLE, request_only=True)],
        responses={202: inline_serializer("PrefetchQueued", {"status": serializers.CharField()}),
                   400: OpenApiResponse(description="malformed request"),
                   403: OpenApiResponse(description="not an account of the ordering hospital"),
                   404: OpenApiResponse(description="no patient with this local id at the caller's hospital")},
        tags=["federation"],
    )
    def post(self, request):
        from exchange.federation.tasks import prefetch_priors_task

        form = PrefetchInput(data=request.data)
        if not form.is_valid():
            return Response({"error": "invalid request", "fields": form.errors}, status=status.HTTP_400_BAD_REQUEST)
        data = form.validated_data
        ref = data["patient"]
        profile = getattr(request.user, "profile", None)
        hospital = profile.hospital if profile is not None and profile.role in TRIGGER_ROLES else None
        details = {"prefetch": "requested", "reason": data["reason"]}
        named_other = hospital is not None and (
            ref.get("hospital", hospital.code) != hospital.code
            or ref.get("issuer", hospital.assigning_authority) != hospital.assigning_authority)
        if hospital is None or named_other:
            with transaction.atomic():
                record(Event.ACCESS_DENIED, request.user, Outcome.MINOR_FAILURE,
                       details={**details, "path": request.path, "why": "role" if hospital is None else "other hospital"})
            message = ("only a clinician or the ingest/gateway account of the ordering hospital may request a prefetch"
                       if hospital is None else "name the patient by your own hospital's local id")
            return Response({"error": message}, status=status.HTTP_403_FORBIDDEN)
        ident = (PatientIdentifier.objects.select_related("patient")
                 .filter(hospital=hospital, local_id=ref["identifier"]).first())
        if ident is None:
            with transaction.atomic():
                record(Event.INSTANCES_TRANSFERRED, request.user, Outcome.MINOR_FAILURE, details={**details, "found": False})
            return Response({"error": "no patient with this local id at your hospital"}, status=status.HTTP_404_NOT_FOUND)
        patient = _patient(ident)
        kwargs = {
            "patient_id": patient.pk,
            "modalities": [m.upper() for m in data.get("modalities", [])],
            "date_from": data["since"].strftime("%Y%m%d") if data.get("since") else None,
            "date_to": data["until"].strftime("%Y%m%d") if data.get("until") else None,
            "limit": data.get("limit"),
            "requested_by": request.user.pk,
            "reason": data["reason"],
        }
        with transaction.atomic():
            record(Event.INSTANCES_TRANSFERRED, request.user, Outcome.SUCCESS, patient=patient, purpose=Purpose.TREATMENT,
                   details={**details, "modalities": kwargs["modalities"]})
            transaction.on_commit(lambda: prefetch_priors_task.delay(**kwargs))
        return Response({"status": "queued"}, status=status.HTTP_202_ACCEPTED)
