"""The regulator's pages (issue #4): dashboard, trail search, one patient's access history, the
break-glass review queue, reports (CSV, printable) and exports (DICOM, FHIR, CSV).

Role regulator only. Each page writes its own audit event (QUERY; EXPORT for downloads) before
anything leaves, because looking at who looked at a patient is itself an access to watch.
"""

import csv
from datetime import datetime
from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from audit import anomalies, exports, record, reports, selectors
from audit.forms import BreakGlassReviewForm, EventSearchForm, ExportForm, PeriodForm, break_glass_review_create
from audit.models import Event, Outcome, ReviewStatus
from consent.policy import Purpose
from hospitals.models import Role

PAGE_SIZE = 50
# The queue page lists this many pending events (oldest first) and this many past reviews.
QUEUE_SIZE = 100
REVIEWED_SIZE = 50


def regulator_required(view):
    """Anonymous: to the login page. Any role but regulator: 403, and the attempt is audited."""

    @login_required
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        profile = getattr(request.user, "profile", None)
        if profile is None or profile.role != Role.REGULATOR:
            with transaction.atomic():
                record(Event.ACCESS_DENIED, request.user, Outcome.MINOR_FAILURE,
                       details={"path": request.path, "reason": "regulator role required"})
            return render(request, "audit/forbidden.html", status=403)
        return view(request, *args, **kwargs)

    return wrapped


def _audit(request, event: Event, page: str, patient=None, **details) -> None:
    with transaction.atomic():
        record(event, request.user, purpose=Purpose.OVERSIGHT, patient=patient, details={"page": page, **details})


def _page(qs, request):
    """One page of events, read now: the page shows the trail as it was before this look at it
    was recorded (and the count and the rows agree)."""
    page = Paginator(qs, PAGE_SIZE).get_page(request.GET.get("page"))
    page.object_list = list(page.object_list)
    return page


def _filename(stem: str, extension: str) -> str:
    return f"{stem}-{datetime.now():%Y%m%d-%H%M%S}.{extension}"


def _export_response(request, qs, fmt: str, page: str, filters: selectors.EventFilters) -> StreamingHttpResponse:
    """Audit the export (EXPORT, before any byte leaves), then stream it."""
    _audit(request, Event.EXPORT, page, patient=filters.patient, format=fmt, filters=filters.as_details())
    response = StreamingHttpResponse(exports.export_stream(qs, fmt), content_type=exports.CONTENT_TYPES[fmt])
    name = _filename("audit-trail", exports.FILE_EXTENSIONS[fmt])
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@regulator_required
def dashboard(request):
    data = request.GET.copy()
    for name, default in zip(("date_from", "date_to"), reports.default_period()):
        data.setdefault(name, default.isoformat())  # so the form shows the period on screen
    form = PeriodForm(data)
    if not form.is_valid():
        return render(request, "audit/dashboard.html", {"form": form}, status=400)
    date_from, date_to = form.cleaned_data["date_from"], form.cleaned_data["date_to"]
    figures = reports.dashboard(date_from, date_to)
    fmt = request.GET.get("format", "")
    period = {"date_from": date_from.isoformat(), "date_to": date_to.isoformat()}
    if fmt == "csv":
        _audit(request, Event.EXPORT, "audit_dashboard", format="csv", filters=period)
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{_filename("audit-dashboard", "csv")}"'
        writer = csv.writer(response)
        for row in reports.csv_rows(figures):
            writer.writerow([exports.spreadsheet_safe(v) if isinstance(v, str) else v for v in row])
        return response
    _audit(request, Event.QUERY, "audit_dashboard", filters=period, format=fmt or "html")
    context = {
        "form": form, "d": figures, "charts": reports.charts(figures),
        "many_threshold": anomalies.MANY_PATIENTS_PER_DAY,
        "flag_count": sum(len(f) for f in figures.flags.values()),
        "pending": selectors.break_glass_pending().count(),
    }
    return render(request, "audit/report.html" if fmt == "print" else "audit/dashboard.html", context)


@regulator_required
def events(request):
    form = EventSearchForm(request.GET)
    if not form.is_valid():
        return render(request, "audit/events.html", {"form": form}, status=400)
    filters = form.filters()
    qs = selectors.events_search(filters)
    if request.GET.get("format") == "csv":
        return _export_response(request, qs, exports.ExportFormat.CSV, "audit_events", filters)
    page = _page(qs, request)
    _audit(request, Event.QUERY, "audit_events", patient=filters.patient, filters=filters.as_details(),
           results=page.paginator.count)
    return render(request, "audit/events.html", {"form": form, "page": page, "filters": filters})


@regulator_required
def patient_history(request, enterprise_id):
    from exchange.mpi.models import Patient

    patient = get_object_or_404(Patient, enterprise_id=enterprise_id)
    filters = selectors.EventFilters(patient=patient)
    qs = selectors.patient_history(patient)
    if request.GET.get("format") == "csv":
        return _export_response(request, qs, exports.ExportFormat.CSV, "audit_patient_history", filters)
    page = _page(qs, request)
    _audit(request, Event.QUERY, "audit_patient_history", patient=patient, results=page.paginator.count)
    return render(request, "audit/patient.html", {"patient": patient, "page": page})


@regulator_required
def break_glass(request):
    form, error, status = None, "", 200
    if request.method == "POST":
        form = BreakGlassReviewForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                review = break_glass_review_create(event_id=data["event"], status=data["status"],
                                                   comment=data["comment"], reviewer=request.user)
            except ValidationError as exc:
                error, status = " ".join(exc.messages), 400
            else:
                return redirect(f"{reverse('audit:break-glass')}?reviewed={review.event.seq}")
        else:
            error, status = " ".join(m for errors in form.errors.values() for m in errors), 400
    pending = selectors.break_glass_pending()
    pending_count = pending.count()
    _audit(request, Event.QUERY, "audit_break_glass", pending=pending_count)
    return render(request, "audit/break_glass.html", {
        "pending": pending[:QUEUE_SIZE], "pending_count": pending_count,
        "reviewed": selectors.break_glass_reviewed()[:REVIEWED_SIZE], "statuses": ReviewStatus,
        "error": error, "failed_event": form.data.get("event") if form is not None else None,
        "just_reviewed": request.GET.get("reviewed", ""),
    }, status=status)


@regulator_required
def export(request):
    form = ExportForm(request.GET or None)
    if not form.is_valid():
        _audit(request, Event.QUERY, "audit_export_form")
        return render(request, "audit/export.html", {"form": form}, status=400 if request.GET else 200)
    filters = form.filters()
    return _export_response(request, selectors.events_search(filters), form.cleaned_data["format"],
                            "audit_export", filters)
