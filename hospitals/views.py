"""Onboarding pages for a hospital admin: profile → add archive endpoint → test → initial index
sync (live progress) → go live. Views parse input, call one service in hospitals.services, render."""

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpResponseForbidden, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_POST

from exchange.federation.connectors.move import move_destination
from exchange.federation.models import SyncJob
from hospitals import services
from hospitals.forms import EndpointForm
from hospitals.models import ArchiveEndpoint, EndpointStatus, Role


def _admin_hospital(request):
    profile = getattr(request.user, "profile", None)
    if profile is None or profile.role != Role.HOSPITAL_ADMIN or profile.hospital_id is None:
        return None
    return profile.hospital


def _own_endpoint(request, pk):
    hospital = _admin_hospital(request)
    if hospital is None:
        return None, HttpResponseForbidden("Only the hospital's admins manage its archives.")
    # Another hospital's endpoint is "not found", not "forbidden": ids do not leak.
    return get_object_or_404(ArchiveEndpoint.objects.select_related("hospital"), pk=pk, hospital=hospital), None


def _back(endpoint, notice: str = ""):
    url = reverse("hospitals:endpoint", kwargs={"pk": endpoint.pk})
    return redirect(url + ("?" + urlencode({"notice": notice}) if notice else ""))


def _messages_of(exc: ValidationError) -> list[str]:
    if hasattr(exc, "message_dict"):
        return [f"{k}: {' '.join(v)}" if k != "__all__" else " ".join(v) for k, v in exc.message_dict.items()]
    return list(exc.messages)


@login_required
def profile(request):
    hospital = _admin_hospital(request)
    if hospital is None:
        return HttpResponseForbidden("Only hospital admins see the hospital profile.")
    endpoints = ArchiveEndpoint.objects.filter(hospital=hospital)
    return render(request, "hospitals/profile.html", {"hospital": hospital, "endpoints": endpoints})


@login_required
def endpoint_add(request):
    hospital = _admin_hospital(request)
    if hospital is None:
        return HttpResponseForbidden("Only hospital admins add archives.")
    errors: list[str] = []
    form = EndpointForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = dict(form.cleaned_data)
        kind, name, secret = data.pop("kind"), data.pop("name"), data.pop("secret") or ""
        try:
            endpoint = services.endpoint_create(hospital=hospital, kind=kind, name=name, secret=secret, actor=request.user,
                                                **data)
        except ValidationError as exc:
            errors = _messages_of(exc)
        else:
            return redirect("hospitals:endpoint", pk=endpoint.pk)
    return render(request, "hospitals/endpoint_form.html", {"hospital": hospital, "form": form, "errors": errors})


@login_required
def endpoint_detail(request, pk):
    endpoint, denied = _own_endpoint(request, pk)
    if denied:
        return denied
    jobs = SyncJob.objects.filter(endpoint=endpoint)[:20]
    latest = jobs[0] if jobs else None
    can_go_live = endpoint.status != EndpointStatus.LIVE and (
        not endpoint.queryable or any(j.status == "done" for j in jobs))
    return render(request, "hospitals/endpoint_detail.html", {
        "endpoint": endpoint, "jobs": jobs, "latest": latest, "can_go_live": can_go_live,
        "notice": request.GET.get("notice", "")[:200],
        # What the hospital's PACS must send to: the C-MOVE destination, or the push target.
        "platform_scp": move_destination()})


@login_required
@require_POST
def endpoint_test(request, pk):
    endpoint, denied = _own_endpoint(request, pk)
    if denied:
        return denied
    services.endpoint_test(endpoint, actor=request.user)
    return redirect("hospitals:endpoint", pk=endpoint.pk)


@login_required
@require_POST
def endpoint_sync(request, pk):
    endpoint, denied = _own_endpoint(request, pk)
    if denied:
        return denied
    try:
        job = services.endpoint_sync_start(endpoint=endpoint, actor=request.user)
    except ValidationError as exc:
        return _back(endpoint, " ".join(exc.messages))
    if job is None:
        return _back(endpoint, "A sync of this archive is already queued or running.")
    return redirect("hospitals:endpoint", pk=endpoint.pk)


@login_required
@require_POST
def endpoint_live(request, pk):
    endpoint, denied = _own_endpoint(request, pk)
    if denied:
        return denied
    try:
        services.endpoint_go_live(endpoint=endpoint, actor=request.user)
    except ValidationError as exc:
        return _back(endpoint, " ".join(exc.messages))
    return redirect("hospitals:endpoint", pk=endpoint.pk)


@login_required
def endpoint_status(request, pk):
    """Small JSON for the progress bar: the endpoint's status and its latest sync job."""
    endpoint, denied = _own_endpoint(request, pk)
    if denied:
        return JsonResponse({"error": "forbidden"}, status=403)
    job = SyncJob.objects.filter(endpoint=endpoint).first()
    body = {"endpoint": {"id": endpoint.pk, "status": endpoint.status,
                         "watermark": endpoint.sync_watermark.isoformat() if endpoint.sync_watermark else None},
            "job": None}
    if job is not None:
        body["job"] = {"id": job.pk, "status": job.status, "progress": job.progress, "message": job.message,
                       "studies_seen": job.studies_seen, "studies_created": job.studies_created,
                       "studies_updated": job.studies_updated, "studies_withdrawn": job.studies_withdrawn,
                       "series": job.series, "instances": job.instances,
                       "errors": len(job.errors),
                       "started_at": job.started_at.isoformat() if job.started_at else None,
                       "finished_at": job.finished_at.isoformat() if job.finished_at else None}
    return JsonResponse(body)
