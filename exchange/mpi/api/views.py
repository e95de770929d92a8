"""Patient index API: identity feed (FHIR R4 Patient, HL7 v2 ADT), PIX, PDQ and $match.

Thin views: parse, call one service or selector, audit, answer. Who may see a patient is decided
by exchange/mpi/selectors.visible_patients (studies through consent.policy); identity card and
phone numbers leave only masked. Every answer with patient data is audited before it is sent.
"""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import ParseError, PermissionDenied, UnsupportedMediaType
from rest_framework.parsers import BaseParser, JSONParser
from rest_framework.response import Response
from rest_framework.views import APIView

from audit import record
from audit.models import Event, Outcome
from exchange.mpi import selectors, services
from exchange.mpi.api import fhir, hl7v2
from exchange.mpi.api.serializers import (
    FhirBundleSerializer,
    FhirParametersSerializer,
    FhirPatientSerializer,
    OperationOutcomeSerializer,
)
from exchange.mpi.identity import ric_blind_index
from exchange.mpi.models import Patient, PatientIdentifier
from exchange.mpi.normalize import ric_normalize
from hospitals.models import HOSPITAL_ROLES, Hospital

FHIR_JSON = "application/fhir+json"
PATIENT_EXAMPLE = {
    "resourceType": "Patient",
    "identifier": [{"system": "PPH-MRN", "value": "PPH0001"},
                   {"system": "urn:oid:2.16.156.10011.1.5", "value": "110101199003074514"}],
    "name": [{"use": "official", "text": "王小东", "family": "王", "given": ["小东"],
              "extension": [{"url": fhir.REPRESENTATION, "valueCode": "IDE"}]},
             {"use": "usual", "family": "Wang", "given": ["XiaoDong"],
              "extension": [{"url": fhir.REPRESENTATION, "valueCode": "ABC"}]}],
    "gender": "male",
    "birthDate": "1990-03-07",
    "telecom": [{"system": "phone", "value": "13812345678"}],
}


class FhirJSONParser(JSONParser):
    media_type = FHIR_JSON


class PlainTextParser(BaseParser):
    media_type = "text/plain"

    def parse(self, stream, media_type=None, parser_context=None):
        data = stream.read()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError("the message is not UTF-8 text") from None


class Hl7Parser(PlainTextParser):
    media_type = "application/hl7-v2"


def _outcome(message: str, code: str = "invalid", http: int = status.HTTP_400_BAD_REQUEST) -> Response:
    return Response(fhir.operation_outcome(message, code), status=http)


class _FhirView(APIView):
    parser_classes = [JSONParser, FhirJSONParser]

    def handle_exception(self, exc):
        # Malformed bodies answer with a FHIR OperationOutcome, never a 500.
        if isinstance(exc, (ParseError, UnsupportedMediaType)):
            return _outcome(str(exc.detail), "structure", exc.status_code)
        if isinstance(exc, fhir.FhirError):
            return _outcome(str(exc))
        return super().handle_exception(exc)


def _feed_hospital(user) -> Hospital:
    profile = getattr(user, "profile", None)
    if profile is None or profile.role not in HOSPITAL_ROLES:
        raise PermissionDenied("only accounts of a member hospital feed identities")
    return profile.hospital


def _visible_identifiers(patient: Patient) -> list[PatientIdentifier]:
    # The caller may see the patient: every hospital's local id is cross-referenced (PIX).
    return list(patient.identifiers.select_related("hospital").order_by("pk"))


def _resource(patient: Patient) -> dict:
    return fhir.patient_resource(patient, _visible_identifiers(patient))


def _surviving(patient: Patient) -> Patient:
    seen = set()
    while patient.merged_into_id and patient.pk not in seen:
        seen.add(patient.pk)
        patient = Patient.objects.get(pk=patient.merged_into_id)
    return patient


class PatientFeedView(_FhirView):
    @extend_schema(
        operation_id="mpi_fhir_patient_create",
        summary="Identity feed: register a patient (FHIR R4 Patient create)",
        description="A hospital account registers one of its local ids. The identity goes through the same "
        "matcher as DICOM ingest: linked to a known patient, sent to review, or a new patient. Identifier "
        "system = the hospital's assigning authority; the Resident Identity Card number as system "
        "urn:oid:2.16.156.10011.1.5. Hanzi and pinyin names as two HumanNames marked IDE/ABC "
        "(iso21090-EN-representation), or one HumanName with text in hanzi and family/given in pinyin.",
        request={FHIR_JSON: FhirPatientSerializer, "application/json": FhirPatientSerializer},
        examples=[OpenApiExample("hanzi and pinyin", value=PATIENT_EXAMPLE, request_only=True)],
        responses={201: FhirPatientSerializer, 200: FhirPatientSerializer, 400: OperationOutcomeSerializer,
                   403: OperationOutcomeSerializer, 409: OperationOutcomeSerializer},
        tags=["patient index"],
    )
    def post(self, request):
        hospital = _feed_hospital(request.user)
        demographics = fhir.patient_demographics(request.data, authority=hospital.assigning_authority)
        try:
            with transaction.atomic():
                known = PatientIdentifier.objects.filter(hospital=hospital, local_id=demographics.local_id).exists()
                ident = services.identifier_resolve(hospital=hospital, demographics=demographics, actor=request.user)
                body = _resource(ident.patient)
                record(Event.PATIENT_RECORD, request.user, patient=ident.patient,
                       details={"api": "fhir-feed", "action": "create", "identifier": ident.pk, "known": known})
        except services.IdentityConflict as exc:
            return _outcome(str(exc), "conflict", status.HTTP_409_CONFLICT)
        response = Response(body, status=status.HTTP_200_OK if known else status.HTTP_201_CREATED,
                            content_type=FHIR_JSON)
        response["Location"] = request.build_absolute_uri(f"/api/mpi/fhir/Patient/{hospital.code}/{ident.local_id}")
        return response


class PatientUpdateView(_FhirView):
    @extend_schema(
        operation_id="mpi_fhir_patient_update",
        summary="Identity feed: update a patient (FHIR R4 Patient update)",
        description="Replace the demographics the hospital recorded for its local id (created if unknown). "
        "A changed identity card number for a known local id is refused (409).",
        request={FHIR_JSON: FhirPatientSerializer, "application/json": FhirPatientSerializer},
        responses={200: FhirPatientSerializer, 400: OperationOutcomeSerializer, 403: OperationOutcomeSerializer,
                   409: OperationOutcomeSerializer},
        tags=["patient index"],
    )
    def put(self, request, hospital_code: str, local_id: str):
        hospital = _feed_hospital(request.user)
        if hospital.code != hospital_code:
            return _outcome("accounts update only their own hospital's local ids", "forbidden", status.HTTP_403_FORBIDDEN)
        demographics = fhir.patient_demographics(request.data, authority=hospital.assigning_authority, local_id=local_id)
        try:
            with transaction.atomic():
                ident, outcome = services.identifier_update(hospital=hospital, demographics=demographics, actor=request.user)
                ident.refresh_from_db()
                body = _resource(ident.patient)
                record(Event.PATIENT_RECORD, request.user, patient=ident.patient,
                       details={"api": "fhir-feed", "action": "update", "identifier": ident.pk, "outcome": outcome})
        except services.IdentityConflict as exc:
            return _outcome(str(exc), "conflict", status.HTTP_409_CONFLICT)
        return Response(body, content_type=FHIR_JSON)


class PixView(APIView):
    @extend_schema(
        operation_id="mpi_pix",
        summary="PIX: cross-reference a local id (IHE PIXm ITI-83 style)",
        description="identifier=<assigning authority>|<local id> → FHIR Parameters with the enterprise id "
        "(targetId, and a urn:uuid targetIdentifier) and every local id of the patient. Only for patients the "
        "caller may see: hospital staff see patients with studies or local ids at their own hospital, data "
        "stewards all. Unknown or not visible: 404.",
        parameters=[OpenApiParameter("identifier", OpenApiTypes.STR, required=True,
                                     description="<assigning authority>|<local id>", examples=[
                                         OpenApiExample("local id", value="PPH-MRN|PPH0001")])],
        responses={200: FhirParametersSerializer, 400: OperationOutcomeSerializer, 404: OperationOutcomeSerializer},
        tags=["patient index"],
    )
    def get(self, request):
        authority, sep, local_id = request.query_params.get("identifier", "").partition("|")
        if not sep or not authority or not local_id:
            return _outcome("identifier must be <assigning authority>|<local id>")
        ident = (PatientIdentifier.objects.select_related("patient", "hospital")
                 .filter(hospital__assigning_authority=authority, local_id=local_id).first())
        patient = _surviving(ident.patient) if ident else None
        visible = patient is not None and selectors.patient_may_see(request.user, patient)
        with transaction.atomic():
            details = {"api": "pix", "authority": authority[:64], "local_id": local_id[:64], "found": visible}
            if visible:
                record(Event.QUERY, request.user, patient=patient, details=details)
            elif patient is not None:
                # Known, but not to this caller: refused like any other read (the answer stays 404,
                # so the caller learns nothing about the identifier's existence).
                record(Event.ACCESS_DENIED, request.user, Outcome.MINOR_FAILURE, patient=patient, details=details)
            else:
                record(Event.QUERY, request.user, Outcome.MINOR_FAILURE, details=details)
            if not visible:
                return _outcome("no patient with this identifier that you may see", "not-found", status.HTTP_404_NOT_FOUND)
            params = [{"name": "targetIdentifier", "valueIdentifier": {
                "system": fhir.ENTERPRISE_SYSTEM, "value": f"urn:uuid:{patient.enterprise_id}"}}]
            for other in _visible_identifiers(patient):
                params.append({"name": "targetIdentifier", "valueIdentifier": {
                    "system": other.hospital.assigning_authority, "value": other.local_id,
                    "assigner": {"display": other.hospital.code}}})
            params.append({"name": "targetId", "valueReference": {"reference": f"Patient/{patient.enterprise_id}"}})
        return Response({"resourceType": "Parameters", "parameter": params}, content_type=FHIR_JSON)


class PdqView(APIView):
    @extend_schema(
        operation_id="mpi_pdq",
        summary="PDQ: demographic query (IHE PDQm ITI-78 style) → FHIR Bundle of Patient",
        description="Name in hanzi or pinyin, with or without tones, partial (a prefix, or * and ? wildcards); "
        "birth date; gender; identity card number (identifier=<number> or urn:oid:2.16.156.10011.1.5|<number>) "
        "or a local id (identifier=<authority>|<local id>). Conditions apply to one hospital's record. Only "
        "patients the caller may see; numbers in answers are masked.",
        parameters=[
            OpenApiParameter("name", OpenApiTypes.STR, description="e.g. 王*, wang xiaodong, WÁNG*"),
            OpenApiParameter("birthdate", OpenApiTypes.DATE),
            OpenApiParameter("gender", OpenApiTypes.STR, enum=["male", "female", "other", "unknown"]),
            OpenApiParameter("identifier", OpenApiTypes.STR),
        ],
        responses={200: FhirBundleSerializer, 400: OperationOutcomeSerializer},
        tags=["patient index"],
    )
    def get(self, request):
        q = request.query_params
        name, birth, gender, identifier = (q.get("name", "").strip(), q.get("birthdate", "").strip(),
                                           q.get("gender", "").strip(), q.get("identifier", "").strip())
        if not any((name, birth, gender, identifier)):
            return _outcome("give at least one of name, birthdate, gender, identifier")
        try:
            birth_date = fhir._birth_date({"birthDate": birth}) if birth else None
        except fhir.FhirError:
            return _outcome("birthdate must be YYYY-MM-DD")
        if birth and birth_date is None:
            return _outcome("birthdate must be YYYY-MM-DD")
        if gender and gender not in fhir.GENDER_TO_SEX:
            return _outcome("gender must be male, female, other or unknown")
        ric_index = None
        local = None
        if identifier:
            system, sep, value = identifier.rpartition("|")
            if not sep or system in fhir.RIC_SYSTEMS:
                number, state = ric_normalize(value)
                if state != "valid":
                    return _outcome("identifier is not a valid Resident Identity Card number")
                ric_index = ric_blind_index(number)
            else:
                local = (system, value)
        patients = selectors.pdq_search(request.user, name=name, birth_date=birth_date,
                                        sex=fhir.GENDER_TO_SEX.get(gender, ""), ric_index=ric_index, local=local)
        entries = [{"resource": _resource(p), "search": {"mode": "match"}} for p in patients]
        with transaction.atomic():
            record(Event.QUERY, request.user, details={
                "api": "pdq", "query": {"name": name[:64], "birthdate": birth, "gender": gender,
                                        "identifier": "identity card number" if ric_index else (local[0] if local else "")},
                "results": len(entries), "patients": [e["resource"]["id"] for e in entries]})
        return Response(fhir.bundle(entries, request.build_absolute_uri("/api/mpi/fhir/Patient")), content_type=FHIR_JSON)


class MatchView(_FhirView):
    @extend_schema(
        operation_id="mpi_fhir_patient_match",
        summary="Patient $match (FHIR R4): scored candidates",
        description="Parameters with a 'resource' Patient (and optional count, onlyCertainMatches) → Bundle whose "
        "entries carry search.score (0-1) and the match-grade extension: certain (identity card number or score "
        "above the link threshold), probable (review band), possible (below, but not ruled out). Only patients the "
        "caller may see.",
        request={FHIR_JSON: FhirParametersSerializer, "application/json": FhirParametersSerializer},
        responses={200: FhirBundleSerializer, 400: OperationOutcomeSerializer},
        tags=["patient index"],
    )
    def post(self, request):
        resource, count, only_certain = fhir.match_parameters(request.data)
        demographics = fhir.patient_demographics(resource, authority=None)
        profile = getattr(request.user, "profile", None)
        code = profile.hospital.code if profile and profile.hospital_id else ""
        ranked = services.match_rank(hospital_code=code, demographics=demographics, limit=count * 3)
        visible = set(selectors.visible_patients(request.user).filter(pk__in=[c.patient_id for _, c in ranked])
                      .values_list("pk", flat=True))
        link, review = settings.MPI_LINK_THRESHOLD, settings.MPI_REVIEW_THRESHOLD
        entries = []
        for score, cand in ranked:
            if cand.patient_id not in visible or score.total < 0:
                continue
            certain = score.rule == "ric-match" or score.total >= link
            grade = "certain" if certain else "probable" if score.total >= review else "possible"
            if only_certain and grade != "certain":
                continue
            value = 1.0 if score.rule == "ric-match" else round(min(1.0, max(0.0, score.total / link)), 3)
            entries.append({"resource": _resource(cand.patient), "search": {
                "mode": "match", "score": value,
                "extension": [{"url": fhir.MATCH_GRADE, "valueCode": grade}]}})
            if len(entries) >= count:
                break
        with transaction.atomic():
            record(Event.QUERY, request.user, details={"api": "fhir-match", "results": len(entries),
                                                       "patients": [e["resource"]["id"] for e in entries]})
        return Response(fhir.bundle(entries, request.build_absolute_uri("/api/mpi/fhir/Patient")), content_type=FHIR_JSON)


class Hl7v2View(APIView):
    parser_classes = [PlainTextParser, Hl7Parser]

    @extend_schema(
        operation_id="mpi_hl7v2_adt",
        summary="Identity feed: HL7 v2 ADT A01/A04/A08/A40 (ER7)",
        description="One ER7-encoded ADT message (segments separated by CR). A01/A04 register, A08 updates, A40 "
        "merges the patient of MRG-1 into the patient of PID-3 (both local ids of the sending hospital). Reads "
        "PID-3, PID-5 (a repetition in hanzi is the ideographic name), PID-7, PID-8, PID-13. Answers with an ACK: "
        "AA (200), AE/AR with the reason (400/409).",
        request={"text/plain": OpenApiTypes.STR, "application/hl7-v2": OpenApiTypes.STR},
        responses={(200, "text/plain"): OpenApiResponse(OpenApiTypes.STR, description="ACK, MSA-1 AA"),
                   (400, "text/plain"): OpenApiResponse(OpenApiTypes.STR, description="ACK, MSA-1 AE/AR")},
        tags=["patient index"],
    )
    def post(self, request):
        hospital = _feed_hospital(request.user)
        now = timezone.now().strftime("%Y%m%d%H%M%S")
        message = None
        try:
            if not isinstance(request.data, str):
                raise hl7v2.Hl7Error("send the message as text/plain")
            message = hl7v2.parse(request.data, authority=hospital.assigning_authority)
            with transaction.atomic():
                if message.trigger in ("A01", "A04"):
                    ident = services.identifier_resolve(hospital=hospital, demographics=message.demographics,
                                                        actor=request.user)
                elif message.trigger == "A08":
                    ident, _ = services.identifier_update(hospital=hospital, demographics=message.demographics,
                                                          actor=request.user)
                else:
                    services.identifier_resolve(hospital=hospital, demographics=message.demographics, actor=request.user)
                    services.identifier_merge_reported(hospital=hospital, surviving_local_id=message.demographics.local_id,
                                                       prior_local_id=message.prior_local_id, actor=request.user)
                    ident = PatientIdentifier.objects.get(hospital=hospital, local_id=message.demographics.local_id)
                record(Event.PATIENT_RECORD, request.user, patient=ident.patient,
                       details={"api": "hl7v2", "trigger": message.trigger, "identifier": ident.pk})
        except hl7v2.Hl7Error as exc:
            return HttpResponse(hl7v2.ack(message, "AR", str(exc), now=now), status=400, content_type="text/plain; charset=utf-8")
        except services.IdentityConflict as exc:
            return HttpResponse(hl7v2.ack(message, "AE", str(exc), now=now), status=409, content_type="text/plain; charset=utf-8")
        except ValidationError as exc:
            return HttpResponse(hl7v2.ack(message, "AE", "; ".join(exc.messages), now=now), status=400,
                                content_type="text/plain; charset=utf-8")
        return HttpResponse(hl7v2.ack(message, "AA", now=now), content_type="text/plain; charset=utf-8")

    def handle_exception(self, exc):
        if isinstance(exc, (ParseError, UnsupportedMediaType)):
            now = timezone.now().strftime("%Y%m%d%H%M%S")
            return HttpResponse(hl7v2.ack(None, "AR", str(exc.detail), now=now), status=exc.status_code,
                                content_type="text/plain; charset=utf-8")
        return super().handle_exception(exc)
