"""Patient portal (/me/), share links (/s/), access requests and break-glass (/consent/).

Thin views: parse, call a service or selector, render. Reads of patient data go through
consent.policy (via consent.selectors) and are audited before the bytes leave.
"""

import functools
from datetime import timedelta

import segno
from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.http import Http404, HttpResponse, HttpResponseForbidden
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from audit import record
from audit.models import Event, Outcome
from consent import forms, policy, selectors, services
from consent.models import AccessRequest, Consent, RequestStatus, ShareLink
from exchange.dicomweb import render as dicom_render
from exchange.federation import proxy
from exchange.federation.connectors import ConnectorError, ErrorCode
from exchange.studies.models import Instance, Study
from hospitals.models import Role

# --- helpers -------------------------------------------------------------------------------


def _role(user) -> str:
    profile = getattr(user, "profile", None) if user.is_authenticated else None
    return profile.role if profile else ""


def patient_required(view):
    """The portal is for patient accounts: others are sent to the portal login or refused."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect(reverse("portal-login") + "?next=" + request.path)
        if _role(request.user) != Role.PATIENT or request.user.profile.patient_id is None:
            return HttpResponseForbidden("The patient portal is for patients.")
        return view(request, *args, **kwargs)

    return wrapper


def clinician_required(view):
    @functools.wraps(view)
    @login_required
    def wrapper(request, *args, **kwargs):
        if _role(request.user) != Role.CLINICIAN:
            return HttpResponseForbidden("Only clinicians request access or break the glass.")
        return view(request, *args, **kwargs)

    return wrapper


def denied_page(request, study, reason: str):
    """The 403 page of a refused study: the reason, and for clinicians the ways in."""
    latest = None
    if _role(request.user) == Role.CLINICIAN and study is not None:
        latest = AccessRequest.objects.filter(requester=request.user, study=study).order_by("-created_at").first()
    return render(request, "consent/denied.html", {
        "study": study, "reason": reason, "clinician": _role(request.user) == Role.CLINICIAN, "latest": latest,
    }, status=403)


# --- Portal login --------------------------------------------------------------------------


def portal_login(request):
    if request.user.is_authenticated and _role(request.user) == Role.PATIENT:
        return redirect("portal-home")
    form = forms.PhoneForm(request.POST or None)
    error = ""
    if request.method == "POST" and form.is_valid():
        try:
            index = services.otp_send(phone=form.cleaned_data["phone"])
        except services.OtpRefused as exc:
            error = str(exc)
        else:
            request.session["portal_phone_index"] = index
            request.session["portal_phone_hint"] = form.cleaned_data["phone"].strip()[-4:]
            return redirect("portal-code")
    return render(request, "consent/login.html", {"form": form, "error": error})


def portal_code(request):
    index = request.session.get("portal_phone_index")
    if not index:
        return redirect("portal-login")
    form = forms.CodeForm(request.POST or None)
    error = ""
    if request.method == "POST" and form.is_valid():
        try:
            user = services.otp_verify(phone_index=index, code=form.cleaned_data["code"])
        except services.OtpRefused as exc:
            error = str(exc)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            request.session.pop("portal_phone_index", None)
            return redirect("portal-home")
    elif request.method == "POST":
        error = services.GENERIC_CODE_ERROR
    return render(request, "consent/code.html", {"form": form, "error": error,
                                                 "hint": request.session.get("portal_phone_hint", "")})


# --- Portal pages --------------------------------------------------------------------------


def _audit_own_view(request, page: str, study=None, **details) -> None:
    """A patient reading their own record is still a read of patient data: audited."""
    with transaction.atomic():
        record(Event.QUERY, request.user, patient=request.user.profile.patient, study=study,
               purpose=policy.Purpose.PATIENT_SELF, basis=policy.Basis.PATIENT_SELF, details={"page": page, **details})


@patient_required
def portal_home(request):
    studies = selectors.portal_studies(request.user)
    pending = AccessRequest.objects.filter(patient_id=request.user.profile.patient_id, status=RequestStatus.PENDING
                                           ).select_related("requester", "hospital", "study")
    with transaction.atomic():
        record(Event.QUERY, request.user, patient=request.user.profile.patient, purpose=policy.Purpose.PATIENT_SELF,
               basis=policy.Basis.PATIENT_SELF, details={"page": "portal_studies", "results": len(studies)})
    return render(request, "consent/portal_home.html", {"studies": studies, "pending": pending, "tab": "studies"})


@patient_required
def portal_consents(request):
    patient = request.user.profile.patient
    form = forms.GrantForm(request.POST or None)
    error = ""
    if request.method == "POST" and form.is_valid():
        d = form.cleaned_data
        days = d.get("expires_in_days")
        try:
            services.consent_grant(
                actor=request.user, patient=patient, scope=d["scope"], hospital=d.get("hospital"),
                clinician=d.get("clinician"), modalities=d.get("modalities") or "", date_from=d.get("date_from"),
                date_to=d.get("date_to"), expires_at=timezone.now() + timedelta(days=int(days)) if days else None,
                action="deny" if d.get("deny") else "permit",
            )
        except ValidationError as exc:
            error = " ".join(exc.messages)
        else:
            return redirect(reverse("portal-consents") + "?saved=1")
    consents = Consent.objects.filter(patient=patient).select_related("hospital", "clinician__profile__hospital", "study")
    _audit_own_view(request, "portal_consents")
    pending = AccessRequest.objects.filter(patient=patient, status=RequestStatus.PENDING).select_related("requester", "hospital", "study")
    return render(request, "consent/portal_consents.html", {
        "form": form, "error": error, "consents": consents, "pending": pending, "now": timezone.now(),
        "saved": request.GET.get("saved"), "default": settings.CONSENT_DEFAULT, "tab": "consents",
    })


@require_POST
@patient_required
def portal_consent_revoke(request, pk: int):
    consent = get_object_or_404(Consent, pk=pk, patient_id=request.user.profile.patient_id)
    services.consent_revoke(actor=request.user, consent=consent)
    return redirect(reverse("portal-consents") + "?revoked=1")


@require_POST
@patient_required
def portal_request_decide(request, pk: int):
    req = get_object_or_404(AccessRequest, pk=pk, patient_id=request.user.profile.patient_id)
    try:
        services.access_request_decide(actor=request.user, request=req, approve=request.POST.get("decision") == "approve")
    except ValidationError:
        pass
    return redirect("portal-consents")


@patient_required
def portal_history(request):
    rows = selectors.access_history(request.user.profile.patient)
    _audit_own_view(request, "portal_history")
    return render(request, "consent/portal_history.html", {"rows": rows, "tab": "history"})


@patient_required
def portal_share_create(request, pk: int):
    study = get_object_or_404(Study.objects.select_related("hospital"), pk=pk, patient_id=request.user.profile.patient_id)
    form = forms.ShareForm(request.POST or None)
    error = ""
    if request.method == "POST" and form.is_valid():
        try:
            link, _ = services.share_link_create(actor=request.user, study=study, hours=form.cleaned_data["hours"],
                                                 pin=form.cleaned_data.get("pin") or "")
        except ValidationError as exc:
            error = " ".join(exc.messages)
        else:
            return redirect("portal-share", pk=link.pk)
    links = ShareLink.objects.filter(study=study, patient_id=request.user.profile.patient_id)
    _audit_own_view(request, "portal_share_create", study=study)
    return render(request, "consent/portal_share_create.html", {"study": study, "form": form, "error": error,
                                                                "links": links, "now": timezone.now()})


@patient_required
def portal_share_detail(request, pk: int):
    link = get_object_or_404(ShareLink.objects.select_related("study__hospital"), pk=pk,
                             patient_id=request.user.profile.patient_id)
    url = request.build_absolute_uri(reverse("share", args=[link.token()]))
    qr = segno.make(url, error="m").svg_inline(scale=4, dark="#102a43")
    uses = selectors.share_link_uses(link)
    _audit_own_view(request, "portal_share", study=link.study, share_link=link.pk)
    return render(request, "consent/portal_share.html", {"link": link, "url": url, "qr": qr, "uses": uses,
                                                         "state": link.state()})


@require_POST
@patient_required
def portal_share_revoke(request, pk: int):
    link = get_object_or_404(ShareLink, pk=pk, patient_id=request.user.profile.patient_id)
    services.share_link_revoke(actor=request.user, link=link)
    return redirect("portal-share", pk=link.pk)


# --- Share link pages (no account) ---------------------------------------------------------


def _share_bearer(request, token: str):
    link = ShareLink.objects.select_related("study__hospital", "patient").filter(
        token_index=services.token_index(token)).first()
    if link is None:
        with transaction.atomic():
            record(Event.ACCESS_DENIED, None, Outcome.MINOR_FAILURE,
                   details={"path": "/s/…", "reason": "unknown share link"})
        raise Http404("This link does not exist.")
    pin_ok = not link.pin_hash or request.session.get(f"share_pin_{link.pk}") == link.pin_hash[-16:]
    return link, policy.ShareLinkBearer(link=link, pin_verified=pin_ok)


def share_page(request, token: str):
    link, bearer = _share_bearer(request, token)
    state = link.state()
    if state != "usable":
        services.share_link_use_record(link, action=f"refused_{state}", outcome=Outcome.MINOR_FAILURE)
        return render(request, "consent/share_refused.html", {"state": state}, status=403 if state != "expired" else 410)
    if not bearer.pin_verified:
        form = forms.PinForm(request.POST or None)
        error = ""
        if request.method == "POST" and form.is_valid():
            if services.share_link_check_pin(link=link, pin=form.cleaned_data["pin"]):
                request.session[f"share_pin_{link.pk}"] = link.pin_hash[-16:]
                return redirect("share", token=token)
            link.refresh_from_db()
            if link.state() != "usable":
                return render(request, "consent/share_refused.html", {"state": link.state()}, status=403)
            error = "Wrong PIN."
        return render(request, "consent/share_pin.html", {"form": form, "error": error}, status=200)
    decision = policy.decide(bearer, link.patient, policy.Purpose.TREATMENT, study=link.study)
    if not decision.allowed:
        services.share_link_use_record(link, action="refused", outcome=Outcome.MINOR_FAILURE, reason=decision.reason)
        return render(request, "consent/share_refused.html", {"state": decision.reason}, status=403)
    instances = Instance.objects.filter(series__study=link.study).select_related("series").order_by(
        "series__series_number", "series_id", "instance_number", "id")
    page = Paginator(instances, 12).get_page(request.GET.get("page"))
    services.share_link_use_record(link, action="page", page=page.number)
    return render(request, "consent/share_page.html", {"link": link, "study": link.study, "page": page, "token": token})


def share_image(request, token: str, instance_pk: int):
    link, bearer = _share_bearer(request, token)
    decision = policy.decide(bearer, link.patient, policy.Purpose.TREATMENT, study=link.study)
    if not decision.allowed:
        services.share_link_use_record(link, action="image_refused", outcome=Outcome.MINOR_FAILURE, reason=decision.reason)
        return HttpResponseForbidden(f"Access denied: {decision.reason}")
    instance = Instance.objects.filter(pk=instance_pk, series__study=link.study).first()
    if instance is None:
        raise Http404("no such image in this study")
    services.share_link_use_record(link, action="image", instance=instance.pk)
    try:
        # A federated study's image is fetched from its hospital's archive into the retrieve cache.
        path = proxy.instance_path(instance)
    except ConnectorError as exc:
        status = 504 if exc.code == ErrorCode.TIMEOUT else 502
        return HttpResponse(f"the hospital's archive did not deliver this image: {exc.message}", status=status,
                            content_type="text/plain")
    try:
        data = dicom_render.render(path, 1, viewport=(1024, 1024), media_type="image/jpeg", quality=90)
    except dicom_render.RenderError:
        return HttpResponse("cannot render this image", status=422, content_type="text/plain")
    response = HttpResponse(data, content_type="image/jpeg")
    response["Cache-Control"] = "private, no-store"
    return response


# --- Clinician: access requests and break-glass --------------------------------------------


def _lookup_patient(request, form):
    """The patient named by ?study=<pk> (a refused study) or an identity card number."""
    study_pk = request.GET.get("study") or request.POST.get("study")
    if study_pk and str(study_pk).isdigit():
        study = Study.objects.select_related("patient", "hospital").filter(pk=int(study_pk)).first()
        return (study.patient, study) if study else (None, None)
    ric = form.cleaned_data.get("ric") if form.is_valid() else None
    if ric:
        return selectors.patient_by_ric(ric), None
    return None, None


@clinician_required
def request_access(request):
    form = forms.AccessRequestForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        patient, study = _lookup_patient(request, form)
        if patient is not None:
            services.access_request_create(actor=request.user, patient=patient, study=study,
                                           reason=form.cleaned_data["reason"])
        # The same answer whether or not the number is registered.
        return redirect(reverse("consent-requests") + "?sent=1")
    return render(request, "consent/request_access.html", {"form": form, "study_pk": request.GET.get("study", "")})


@clinician_required
def clinician_requests(request):
    reqs = AccessRequest.objects.filter(requester=request.user).select_related("hospital", "study")[:50]
    with transaction.atomic():
        record(Event.QUERY, request.user, purpose=policy.Purpose.TREATMENT, details={"page": "access_requests"})
    return render(request, "consent/clinician_requests.html", {"requests": reqs, "sent": request.GET.get("sent")})


@clinician_required
def break_glass(request):
    form = forms.BreakGlassForm(request.POST or None)
    error = ""
    if request.method == "POST" and form.is_valid():
        patient, study = _lookup_patient(request, form)
        if patient is None:
            error = "No patient found for this identity card number."
        else:
            try:
                glass = services.break_glass_open(actor=request.user, patient=patient, study=study,
                                                  reason=form.cleaned_data["reason"],
                                                  reason_text=form.cleaned_data["reason_text"])
            except (ValidationError, PermissionDenied) as exc:
                error = " ".join(getattr(exc, "messages", [str(exc)]))
            else:
                if study is not None:
                    return redirect("study", pk=study.pk)
                target = reverse("search") + "?patient_id=" + (patient.identifiers.values_list("local_id", flat=True).first() or "")
                return redirect(target + f"&glass={glass.pk}")
    return render(request, "consent/break_glass.html", {"form": form, "error": error, "hours": settings.BREAK_GLASS_HOURS,
                                                        "study_pk": request.GET.get("study", "")})
