"""Member hospitals and platform accounts."""

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction

from audit import record
from audit.models import Event
from hospitals.models import (
    HOSPITAL_ROLES,
    ArchiveEndpoint,
    EndpointAuth,
    EndpointKind,
    EndpointStatus,
    Hospital,
    Profile,
    Role,
)


def hospital_create(*, code: str, name: str, authority: str | None = None, ae_title: str | None = None, actor=None) -> Hospital:
    code = code.strip().upper()
    hospital = Hospital(code=code, name=name.strip(), assigning_authority=(authority or code).strip(),
                        ae_title=(ae_title or code)[:16].strip())
    hospital.full_clean()
    with transaction.atomic():
        hospital.save()
        record(Event.ADMIN_CHANGE, actor, details={"action": "hospital_create", "hospital": code})
    return hospital


def account_create(*, username: str, role: str, password: str | None, hospital: Hospital | None = None,
                   patient=None, actor=None):
    if role not in Role.values:
        raise ValidationError(f"unknown role {role!r}")
    if role in HOSPITAL_ROLES and hospital is None:
        raise ValidationError(f"role {role} needs a hospital")
    if role not in HOSPITAL_ROLES and hospital is not None:
        raise ValidationError(f"role {role} does not belong to a hospital")
    if role == Role.PATIENT and patient is None:
        raise ValidationError("a patient account needs the patient it belongs to")
    User = get_user_model()
    with transaction.atomic():
        user = User(username=username)
        if password:
            user.set_password(password)
        else:
            user.set_unusable_password()
        user.full_clean(exclude=["password"])
        user.save()
        Profile.objects.create(user=user, role=role, hospital=hospital, patient=patient)
        record(Event.ADMIN_CHANGE, actor, details={"action": "account_create", "username": username, "role": role,
                                                   "hospital": hospital.code if hospital else None})
    return user


# --- Archive endpoints (issue #6) --------------------------------------------------------------

ENDPOINT_FIELDS = ("qido_url", "wado_url", "stow_url", "auth", "username", "verify_tls", "timeout", "remote_ae_title",
                   "host", "port", "calling_ae_title", "retrieve_method")


def _endpoint_validate(endpoint: ArchiveEndpoint) -> None:
    errors: dict[str, str] = {}
    if endpoint.kind == EndpointKind.DICOMWEB:
        if not endpoint.qido_url:
            errors["qido_url"] = "A DICOMweb archive needs its QIDO-RS root URL."
        if endpoint.auth in (EndpointAuth.BASIC, EndpointAuth.BEARER) and not endpoint.secret_encrypted:
            errors["secret"] = "Give the password or token for this kind of authentication."
        if endpoint.auth == EndpointAuth.BASIC and not endpoint.username:
            errors["username"] = "Basic authentication needs a user name."
    elif endpoint.kind == EndpointKind.DIMSE:
        for name, label in (("remote_ae_title", "the archive's AE title"), ("host", "a host"), ("port", "a port")):
            if not getattr(endpoint, name):
                errors[name] = f"A DIMSE archive needs {label}."
        if endpoint.port is not None and not 0 < endpoint.port < 65536:
            errors["port"] = "A port is between 1 and 65535."
    if errors:
        raise ValidationError(errors)


def endpoint_create(*, hospital: Hospital, kind: str, name: str, secret: str = "", actor=None, **fields) -> ArchiveEndpoint:
    """Register an archive endpoint (status draft). ``fields``: any of ENDPOINT_FIELDS."""
    unknown = set(fields) - set(ENDPOINT_FIELDS)
    if unknown:
        raise ValidationError(f"unknown endpoint fields: {', '.join(sorted(unknown))}")
    endpoint = ArchiveEndpoint(hospital=hospital, kind=kind, name=name.strip(),
                               **{k: v for k, v in fields.items() if v is not None})
    if kind == EndpointKind.DIMSE and not endpoint.calling_ae_title:
        endpoint.calling_ae_title = hospital.ae_title
    if kind == EndpointKind.DICOMWEB:
        endpoint.qido_url = endpoint.qido_url.rstrip("/")
        endpoint.wado_url = (endpoint.wado_url or endpoint.qido_url).rstrip("/")
    endpoint.secret = secret
    endpoint.full_clean()
    _endpoint_validate(endpoint)
    with transaction.atomic():
        endpoint.save()
        record(Event.ADMIN_CHANGE, actor, details={"action": "endpoint_create", "hospital": hospital.code,
                                                   "endpoint": endpoint.pk, "kind": kind})
    return endpoint


def endpoint_test(endpoint: ArchiveEndpoint, *, actor=None):
    """Probe the archive (QIDO-RS ``/studies?limit=1`` or C-ECHO) and remember the result.
    Returns TestResult(ok, code, message); never raises for a failing archive."""
    from django.utils import timezone

    from exchange.federation.connectors import ConnectorError, TestResult, connector_for

    try:
        result = connector_for(endpoint).test()
    except ConnectorError as exc:
        result = exc.as_result()
    except Exception as exc:  # a probe must not crash the page; the type is enough to act on
        result = TestResult(False, "protocol", f"Unexpected error while testing ({type(exc).__name__}).")
    updates = {"last_test_at": timezone.now(), "last_test_ok": result.ok, "last_test_result": result.message[:500]}
    if result.ok and endpoint.status in (EndpointStatus.DRAFT, EndpointStatus.FAILED):
        updates["status"] = EndpointStatus.TESTING
    if result.ok:  # searches stop backing off from an archive its admin has just reached
        updates.update(search_failures=0, search_retry_after=None)
    with transaction.atomic():
        ArchiveEndpoint.objects.filter(pk=endpoint.pk).update(**updates)
        record(Event.ADMIN_CHANGE, actor, details={"action": "endpoint_test", "endpoint": endpoint.pk, "ok": result.ok,
                                                   "code": str(result.code)})
    for k, v in updates.items():
        setattr(endpoint, k, v)
    return result


def endpoint_sync_start(*, endpoint: ArchiveEndpoint, actor=None, since=None, trigger: str = "initial"):
    """Queue an index sync (after commit). Returns the job, or None if one is already running."""
    from exchange.federation.services import sync_job_create
    from exchange.federation.tasks import sync_endpoint_task

    if not endpoint.queryable:
        raise ValidationError("A push endpoint is not synced: the hospital sends its studies.")
    with transaction.atomic():
        job = sync_job_create(endpoint=endpoint, actor=actor, trigger=trigger)
        if job is None:
            return None
        if endpoint.status in (EndpointStatus.DRAFT, EndpointStatus.TESTING, EndpointStatus.FAILED):
            ArchiveEndpoint.objects.filter(pk=endpoint.pk).update(status=EndpointStatus.SYNCING)
            endpoint.status = EndpointStatus.SYNCING
        record(Event.ADMIN_CHANGE, actor, details={"action": "endpoint_sync_start", "endpoint": endpoint.pk, "job": job.pk})
        since_text = since.strftime("%Y%m%d") if since else None
        transaction.on_commit(lambda: sync_endpoint_task.delay(endpoint.pk, since_text, job.pk))
    return job


def endpoint_go_live(*, endpoint: ArchiveEndpoint, actor=None) -> ArchiveEndpoint:
    """Live: periodic syncs run and its studies count as the hospital's. Needs a finished sync
    (or, for push, a passed test is not needed: the hospital sends)."""
    from exchange.federation.models import JobStatus

    if endpoint.queryable and not endpoint.sync_jobs.filter(status=JobStatus.DONE).exists():
        raise ValidationError("Run the initial index sync to the end before going live.")
    with transaction.atomic():
        ArchiveEndpoint.objects.filter(pk=endpoint.pk).update(status=EndpointStatus.LIVE)
        endpoint.status = EndpointStatus.LIVE
        record(Event.ADMIN_CHANGE, actor, details={"action": "endpoint_go_live", "endpoint": endpoint.pk})
    return endpoint
