"""STOW-RS request handling (PS3.18 §10.5): stream each part to disk, ingest it, and build the
Store Instances Response Module (PS3.18 §10.5.3, Table 10.5.3-1)."""

from django.db import transaction

from audit import record
from audit.models import Event, Outcome
from exchange.dicomweb.dicomjson import attr
from exchange.dicomweb.multipart import MultipartError, parse_content_type
from exchange.studies import storage
from exchange.studies.dicomfile import FailureReason
from exchange.studies.models import IngestSource
from exchange.studies.services import IngestResult, IngestSession, Status, batch_count, batch_finish, batch_start


def _referenced(result: IngestResult, base_url: str) -> dict:
    return {
        "00081150": attr("UI", result.sop_class_uid),
        "00081155": attr("UI", result.sop_instance_uid),
        "00081190": attr(
            "UR",
            f"{base_url}/studies/{result.study_instance_uid}/series/{result.series_instance_uid}"
            f"/instances/{result.sop_instance_uid}",
        ),
    }


def _failed(result: IngestResult) -> dict:
    item = {
        "00081150": attr("UI", result.sop_class_uid or None),
        "00081155": attr("UI", result.sop_instance_uid or None),
        "00081197": attr("US", int(result.reason)),
    }
    # Error Comment (0000,0902): the reason in words, so a person can act on it.
    item["00000902"] = attr("LO", result.message[:64])
    return item


def store_multipart(reader, *, hospital, actor, base_url: str, expected_study_uid: str | None = None):
    """Store every part; returns (HTTP status, response body)."""
    batch = batch_start(hospital=hospital, actor=actor, source=IngestSource.STOW)
    session = IngestSession(hospital=hospital, actor=actor, source=IngestSource.STOW, batch=batch,
                            expected_study_uid=expected_study_uid)
    broken = ""
    try:
        for part in reader.parts():
            media, _ = parse_content_type(part.content_type)
            if media and media != "application/dicom":
                part.drain()
                session.results.append(IngestResult(Status.REJECTED, reason=FailureReason.CANNOT_UNDERSTAND,
                                                    message="part is not application/dicom"))
                continue
            writer = storage.SpoolWriter()
            try:
                for chunk in part.chunks():
                    writer.write(chunk)
            except storage.TooLarge as exc:
                writer.abort()
                part.drain()
                session.results.append(IngestResult(Status.REJECTED, reason=FailureReason.OUT_OF_RESOURCES, message=str(exc)))
                continue
            except BaseException:
                writer.abort()
                raise
            session.add(writer.close())
    except MultipartError as exc:
        broken = str(exc)
    finally:
        results = session.finish()
        for number, result in enumerate(results, start=1):
            batch_count(batch, result, item=f"part {number}")
        batch_finish(batch, failed=bool(broken) and not results)

    ok = [r for r in results if r.status is not Status.REJECTED]
    failed = [r for r in results if r.status is Status.REJECTED]
    if failed or broken:
        with transaction.atomic():
            record(Event.INSTANCES_STORED, actor, Outcome.MINOR_FAILURE if ok else Outcome.SERIOUS_FAILURE,
                   details={"source": "stow", "batch": batch.pk, "stored": len(ok), "rejected": len(failed),
                            "malformed_request": broken or None})
    body: dict = {}
    studies = {r.study_instance_uid for r in ok}
    if len(studies) == 1:
        body["00081190"] = attr("UR", f"{base_url}/studies/{studies.pop()}")
    if ok:
        body["00081199"] = {"vr": "SQ", "Value": [_referenced(r, base_url) for r in ok]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_failed(r) for r in failed]}
    if broken and not ok:
        return 400, {"error": f"malformed multipart request: {broken}", **body}
    if not results:
        return 400, {"error": "the request contained no instances"}
    if broken:
        body["error"] = f"malformed multipart request after {len(results)} part(s): {broken}"
        return 202, body
    if not ok:
        return 409, body
    return (202 if failed else 200), body
