"""DICOMweb on the platform's own store (PS3.18): STOW-RS, QIDO-RS, WADO-RS.

Views are thin: they parse the request, call a service or selector, and answer. Every read is
decided by consent.policy (through exchange.studies.selectors) and audited before bytes leave.
"""

import itertools
import logging

from django.conf import settings
from django.db import transaction
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from rest_framework.exceptions import APIException
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView

from audit import record
from audit.models import Event, Outcome
from consent import policy
from exchange.dicomweb import dicomjson, query, render
from exchange.dicomweb.multipart import MultipartError, MultipartReader, new_boundary, parse_content_type, stream_parts
from exchange.dicomweb.stow import store_multipart
from exchange.federation import proxy
from exchange.federation.connectors import ConnectorError, ErrorCode
from exchange.studies import storage
from exchange.studies.models import Instance, Series
from exchange.studies.selectors import Denied, NotFound, instances_in, studies_for_read

log = logging.getLogger(__name__)
DICOM_JSON = "application/dicom+json"
CHUNK = 256 * 1024


class AcceptAnything(BaseContentNegotiation):
    """DICOMweb views choose their own media types (PS3.18 §8.7); DRF must not answer 406."""

    def select_parser(self, request, parsers):
        return None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def source_error(exc: ConnectorError) -> JsonResponse:
    """A federated instance its archive did not deliver: 504 if it timed out, else 502, with the
    connector's message (host names and codes, never patient data)."""
    status = 504 if exc.code == ErrorCode.TIMEOUT else 502
    return JsonResponse({"error": f"the hospital archive holding this study did not deliver it: {exc.message}",
                         "code": exc.code}, status=status)


class DicomwebView(APIView):
    content_negotiation_class = AcceptAnything
    renderer_classes = [JSONRenderer]
    parser_classes: list = []

    def handle_exception(self, exc):
        if isinstance(exc, APIException):
            response = super().handle_exception(exc)
            if response.status_code == 401:
                response["WWW-Authenticate"] = 'Token, Basic realm="dicomweb"'
            return response
        raise exc

    def base_url(self, request) -> str:
        return settings.EXCHANGE_PUBLIC_URL + "/dicomweb" if settings.EXCHANGE_PUBLIC_URL else request.build_absolute_uri("/dicomweb")

    def resolve(self, request, study_uid: str):
        """Studies for a read, or an error response (403 with the policy's reason, 404)."""
        try:
            return studies_for_read(request.user, study_uid), None
        except NotFound:
            return None, error(404, "study not found")
        except Denied as denied:
            with transaction.atomic():
                record(
                    Event.ACCESS_DENIED,
                    request.user,
                    Outcome.MINOR_FAILURE,
                    study=denied.study,
                    purpose=policy.purpose_for(request.user),
                    details={"path": request.path, "reason": denied.decision.reason},
                )
            return None, error(403, f"access denied: {denied.decision.reason}")

    def audit_source_failure(self, request, studies, event, exc: ConnectorError) -> None:
        """A read that failed because the study's archive did not deliver: nothing was sent."""
        purpose = policy.purpose_for(request.user)
        with transaction.atomic():
            for study in studies:
                record(event, request.user, Outcome.SERIOUS_FAILURE, study=study, purpose=purpose,
                       details={"path": request.path, "source_error": exc.code})

    def audit_read(self, request, studies, event=Event.INSTANCES_ACCESSED, **details) -> None:
        """Write the read's audit events (committed before any byte is sent)."""
        purpose = policy.purpose_for(request.user)
        with transaction.atomic():
            for study in studies:
                decision = policy.decide(request.user, study.patient, purpose, study=study)
                record(event, request.user, Outcome.SUCCESS, study=study, purpose=purpose, basis=decision.basis,
                       details={"path": request.path, **details})


# --- STOW-RS ------------------------------------------------------------------------------


class StudiesView(DicomwebView):
    """POST: STOW-RS store (PS3.18 §10.5). GET: QIDO-RS search for studies (§10.6)."""

    def post(self, request, study_uid: str | None = None):
        hospital = policy.ingest_hospital(request.user)
        if hospital is None:
            return error(403, "only accounts of a member hospital may store instances")
        media, params = parse_content_type(request.META.get("CONTENT_TYPE", ""))
        if media != "multipart/related":
            return error(415, 'use Content-Type: multipart/related; type="application/dicom"')
        if params.get("type", "application/dicom").lower() != "application/dicom":
            return error(415, 'only type="application/dicom" parts are supported (PS3.18 §10.5.1.2.1)')
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length <= 0:
            return error(411, "Content-Length is required")
        if length > settings.EXCHANGE_MAX_STOW_BYTES:
            return error(413, f"request larger than {settings.EXCHANGE_MAX_STOW_BYTES} bytes")
        try:
            reader = MultipartReader(request._request, params.get("boundary", ""))
        except MultipartError as exc:
            return error(400, str(exc))
        status, body = store_multipart(
            reader, hospital=hospital, actor=request.user, base_url=self.base_url(request), expected_study_uid=study_uid
        )
        return JsonResponse(body, status=status, content_type=DICOM_JSON, safe=False)

    def get(self, request):
        try:
            q = query.parse(request.query_params)
            cond = query.study_filter(q.match)
        except query.QueryError as exc:
            return error(400, str(exc))
        # No DISTINCT: study_filter joins nothing, so each study comes once, and PostgreSQL can
        # stop after the first `limit` rows in (study_date, id) order instead of sorting all.
        qs = policy.visible_studies(request.user).filter(cond).only(*dicomjson.STUDY_FIELDS).order_by("-study_date", "-id")
        studies = list(qs[q.offset : q.offset + q.limit])
        base = self.base_url(request)
        body = [dicomjson.study_attributes(s, base) for s in studies]
        return self.qido_answer(request, "study", q, body)

    def qido_answer(self, request, level, q, body):
        with transaction.atomic():
            record(Event.QUERY, request.user, Outcome.SUCCESS, purpose=policy.purpose_for(request.user),
                   details={"level": level, "query": q.match, "results": len(body), "path": request.path})
        response = JsonResponse(body, safe=False, content_type=DICOM_JSON)
        if q.capped:
            response["Warning"] = '299 exchange: "The number of results exceeded the maximum supported; use offset for more."'
        return response


class SeriesSearchView(StudiesView):
    """QIDO-RS search for series, in a study or across studies (PS3.18 §10.6.1)."""

    def post(self, request, *args, **kwargs):
        return error(405, "method not allowed")

    def get(self, request, study_uid: str | None = None):
        try:
            q = query.parse(request.query_params)
            cond = query.study_filter(q.match, "study__") & query.series_filter(q.match)
        except query.QueryError as exc:
            return error(400, str(exc))
        visible = policy.visible_studies(request.user)
        if study_uid:
            visible = visible.filter(study_instance_uid=study_uid)
        # No DISTINCT: the filters follow foreign keys to one study each and match modalities by
        # subquery, so no row repeats (query.study_filter).
        qs = Series.objects.filter(study__in=visible).filter(cond).select_related("study").order_by("study_id", "series_number", "id")
        base = self.base_url(request)
        body = [dicomjson.series_attributes(s, base) for s in qs[q.offset : q.offset + q.limit]]
        return self.qido_answer(request, "series", q, body)


class InstanceSearchView(SeriesSearchView):
    """QIDO-RS search for instances (PS3.18 §10.6.1)."""

    def get(self, request, study_uid: str | None = None, series_uid: str | None = None):
        try:
            q = query.parse(request.query_params)
            cond = (
                query.study_filter(q.match, "series__study__")
                & query.series_filter(q.match, "series__")
                & query.instance_filter(q.match)
            )
        except query.QueryError as exc:
            return error(400, str(exc))
        visible = policy.visible_studies(request.user)
        if study_uid:
            visible = visible.filter(study_instance_uid=study_uid)
        qs = Instance.objects.filter(series__study__in=visible).filter(cond)
        if series_uid:
            qs = qs.filter(series__series_instance_uid=series_uid)
        qs = qs.select_related("series__study").order_by("series_id", "instance_number", "id")  # no row repeats: no DISTINCT
        base = self.base_url(request)
        body = [dicomjson.instance_attributes(i, base) for i in qs[q.offset : q.offset + q.limit]]
        return self.qido_answer(request, "instance", q, body)


# --- WADO-RS --------------------------------------------------------------------------------


def _file_chunks(key: str):
    with storage.open_key(key) as fp:
        while chunk := fp.read(CHUNK):
            yield chunk


def _accepts(request, media: str) -> bool:
    accept = request.META.get("HTTP_ACCEPT", "") or "*/*"
    for entry in accept.split(","):
        m, params = parse_content_type(entry.strip())
        if m in ("*/*", media) or (m == "multipart/related" and params.get("type", "").lower() == media):
            return True
    return False


def _fetched_parts(first, fetches):
    """(content type, chunks) per instance, from the retrieve proxy's fetches (storage, cache, or
    the archive while filling the cache; a series not cached comes in one request)."""
    try:
        for fetch in itertools.chain([first], fetches):
            yield f"application/dicom; transfer-syntax={fetch.transfer_syntax_uid}", fetch.chunks()
    finally:
        first.close()
        fetches.close()


def _until_source_fails(body):
    """A multipart body that ends WITHOUT its closing delimiter if an archive fails mid-stream:
    the headers are sent, so the client can only tell from a truncated body (RFC 2046 §5.1.1)."""
    try:
        yield from body
    except ConnectorError as exc:
        log.warning("retrieve from a hospital archive failed mid-stream (%s): multipart body truncated", exc.code)
    finally:
        body.close()


class RetrieveView(DicomwebView):
    """WADO-RS retrieve of a study, series or instance as multipart/related application/dicom
    (PS3.18 §10.4.1.1.1), streamed from storage in the stored transfer syntax. Instances of a
    federated study come from the retrieve proxy (exchange/federation/proxy.py), in the
    archive's transfer syntax."""

    def get(self, request, study_uid, series_uid=None, sop_uid=None):
        accept = request.META.get("HTTP_ACCEPT", "")
        if accept and not (_accepts(request, "application/dicom") or "*/*" in accept):
            return error(406, 'this resource is available as multipart/related; type="application/dicom"')
        studies, failure = self.resolve(request, study_uid)
        if failure:
            return failure
        instances = list(instances_in(studies, series_uid, sop_uid))
        if not instances:
            return error(404, "no such series or instance")
        first = fetches = None
        if any(proxy.is_remote(i) for i in instances):
            # The first bytes before any header: if the archive cannot deliver, a clear 502/504
            # instead of a 200 with an empty body.
            fetches = proxy.open_instances(instances, chunk_size=CHUNK)
            try:
                first = next(fetches)
            except ConnectorError as exc:
                fetches.close()
                self.audit_source_failure(request, studies, Event.INSTANCES_TRANSFERRED, exc)
                return source_error(exc)
        try:
            self.audit_read(request, studies, Event.INSTANCES_TRANSFERRED, instances=len(instances))
        except BaseException:
            if first is not None:
                first.close()
                fetches.close()
            raise
        boundary = new_boundary()
        if first is None:
            body = stream_parts(((f"application/dicom; transfer-syntax={i.transfer_syntax_uid}", _file_chunks(i.storage_key))
                                 for i in instances), boundary)
        else:
            body = _until_source_fails(stream_parts(_fetched_parts(first, fetches), boundary))
        response = StreamingHttpResponse(
            body,
            content_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
        )
        return response


class StudyView(RetrieveView):
    """GET: WADO-RS retrieve of the study; POST: STOW-RS store into this study (PS3.18 §10.5)."""

    post = StudiesView.post


class MetadataView(DicomwebView):
    """WADO-RS metadata (PS3.18 §10.4.1.1.2): DICOM JSON of every instance, bulk data by URI."""

    def get(self, request, study_uid, series_uid=None, sop_uid=None):
        studies, failure = self.resolve(request, study_uid)
        if failure:
            return failure
        instances = list(instances_in(studies, series_uid, sop_uid))
        if not instances:
            return error(404, "no such series or instance")
        try:  # federated instances: fetched into the retrieve cache first (fetch-then-serve)
            proxy.warm([i for i in instances if proxy.is_remote(i)])
            paths = {i.pk: proxy.instance_path(i) for i in instances if proxy.is_remote(i)}
        except ConnectorError as exc:
            self.audit_source_failure(request, studies, Event.INSTANCES_ACCESSED, exc)
            return source_error(exc)
        self.audit_read(request, studies, Event.INSTANCES_ACCESSED, metadata=True, instances=len(instances))
        base = self.base_url(request)
        try:
            body = [metadata_json(i, base, paths.get(i.pk)) for i in instances]
        except FileNotFoundError:  # a cache entry evicted between fetch and read (a cache far too small)
            return error(503, "the retrieve cache could not keep this study's instances long enough; try again")
        return JsonResponse(body, safe=False, content_type=DICOM_JSON)


def metadata_json(instance, base: str, path: str | None = None) -> dict:
    import pydicom

    url = (f"{base}/studies/{instance.series.study.study_instance_uid}/series/{instance.series.series_instance_uid}"
           f"/instances/{instance.sop_instance_uid}")
    with (open(path, "rb") if path else storage.open_key(instance.storage_key)) as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, defer_size=64 * 1024)

    def bulk(element) -> str:
        return f"{url}/bulkdata/{element.tag:08X}"

    body = ds.to_json_dict(bulk_data_threshold=64 * 1024, bulk_data_element_handler=bulk)
    if instance.pixel_data_offset is not None:
        body["7FE00010"] = {"vr": "OW" if instance.transfer_syntax_uid.startswith("1.2.840.10008.1.2") and instance.pixel_data_length else "OB",
                            "BulkDataURI": f"{url}/frames/{','.join(str(n) for n in range(1, instance.number_of_frames + 1))}"}
    body["00083002"] = {"vr": "UI", "Value": [instance.transfer_syntax_uid]}
    return body


class FramesView(DicomwebView):
    """WADO-RS frames (PS3.18 §10.4.1.1.3, §8.7.3.5): one part per requested frame."""

    def get(self, request, study_uid, series_uid, sop_uid, frames):
        try:
            numbers = [int(n) for n in frames.split(",")]
        except ValueError:
            return error(400, "frame numbers are a comma-separated list of whole numbers")
        studies, failure = self.resolve(request, study_uid)
        if failure:
            return failure
        instance = next(iter(instances_in(studies, series_uid, sop_uid)), None)
        if instance is None:
            return error(404, "no such series or instance")
        if any(n < 1 or n > instance.number_of_frames for n in numbers):
            return error(404, f"frame numbers must be between 1 and {instance.number_of_frames}")
        remote = proxy.is_remote(instance)
        try:  # a federated instance is fetched into the retrieve cache first (fetch-then-serve)
            path = proxy.instance_path(instance)
        except ConnectorError as exc:
            self.audit_source_failure(request, studies, Event.INSTANCES_ACCESSED, exc)
            return source_error(exc)
        # The cached file's Pixel Data position is found from its header, not taken from the row.
        pixel_data_offset = None if remote else instance.pixel_data_offset
        native_ts = instance.transfer_syntax_uid
        compressed = render.frame_media_type(native_ts) != "application/octet-stream"
        accept = request.META.get("HTTP_ACCEPT", "")
        # Send the stored bitstream when the client takes any transfer syntax or the image type;
        # otherwise decode to uncompressed bytes (the PS3.18 default for octet-stream).
        native_ok = not compressed or not accept or "transfer-syntax=*" in accept.replace('"', "") or render.frame_media_type(native_ts) in accept
        self.audit_read(request, studies, Event.INSTANCES_ACCESSED, frames=numbers, sop_instance_uid=sop_uid)
        boundary = new_boundary()

        def parts():
            for n in numbers:
                if native_ok:
                    data, ts = render.read_frame_bytes(path, n, pixel_data_offset=pixel_data_offset)
                    media = render.frame_media_type(ts) if compressed else "application/octet-stream"
                    yield f"{media}; transfer-syntax={ts}", [data]
                else:
                    yield "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1", [render.decode_frame(path, n)]

        first_type = render.frame_media_type(native_ts) if native_ok else "application/octet-stream"
        try:
            body = b"".join(stream_parts(parts(), boundary))
        except render.RenderError as exc:
            return error(422, str(exc))
        return HttpResponse(body, content_type=f'multipart/related; type="{first_type}"; boundary={boundary}')


class RenderedView(DicomwebView):
    """WADO-RS rendered instance or frame (PS3.18 §10.4.1.1.4, §8.3.5.1): JPEG or PNG with
    optional window=center,width[,function] and viewport=vw,vh."""

    def get(self, request, study_uid, series_uid, sop_uid, frame=None):
        accept = request.META.get("HTTP_ACCEPT", "")
        media = "image/jpeg"
        if "image/png" in accept and "image/jpeg" not in accept.split("image/png")[0]:
            media = "image/png"
        elif accept and "image/jpeg" not in accept and "image/*" not in accept and "*/*" not in accept:
            return error(406, "rendered images are available as image/jpeg or image/png")
        try:
            window = render.parse_window(request.query_params.get("window"))
            viewport = render.parse_viewport(request.query_params.get("viewport"))
            quality = int(request.query_params.get("quality") or 90)
            if not 1 <= quality <= 100:
                raise ValueError
        except (render.RenderError, ValueError) as exc:
            return error(400, str(exc) if isinstance(exc, render.RenderError) else "quality must be 1-100")
        studies, failure = self.resolve(request, study_uid)
        if failure:
            return failure
        instance = next(iter(instances_in(studies, series_uid, sop_uid)), None)
        if instance is None:
            return error(404, "no such series or instance")
        number = int(frame) if frame else 1
        if number < 1 or number > instance.number_of_frames:
            return error(404, f"frame number must be between 1 and {instance.number_of_frames}")
        try:  # a federated instance is fetched into the retrieve cache first (fetch-then-serve)
            path = proxy.instance_path(instance)
        except ConnectorError as exc:
            self.audit_source_failure(request, studies, Event.INSTANCES_ACCESSED, exc)
            return source_error(exc)
        self.audit_read(request, studies, Event.INSTANCES_ACCESSED, rendered=True, frame=number, sop_instance_uid=sop_uid)
        try:
            data = render.render(path, number, window=window,
                                 viewport=viewport, media_type=media, quality=quality)
        except render.RenderError as exc:
            return error(422, f"cannot render this instance: {exc}")
        response = HttpResponse(data, content_type=media)
        response["Cache-Control"] = "private, max-age=300"
        return response
