"""Pages for people: clinician search and study viewing, the hospital admin's ingest summary.

Every page that shows patient data reads through consent.policy and writes its audit event."""

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count, Sum
from django.http import HttpResponseForbidden, Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.functional import cached_property

from audit import record
from audit.models import Event, Outcome
from consent import policy
from consent.views import denied_page
from exchange.dicomweb import query
from exchange.federation.search import PatientNotVisible, federated_search, surviving
from exchange.mpi.models import Patient, PatientIdentifier
from exchange.mpi.selectors import patient_may_see
from exchange.studies.models import Availability, IngestBatch, Instance, Series, Study
from exchange.studies.tasks import import_upload_task, upload_save
from hospitals.models import Hospital, Role

WINDOW_PRESETS = {
    "CT": [("Soft tissue", "40,400"), ("Lung", "-600,1500"), ("Bone", "400,1800"), ("Brain", "40,80")],
}


def _role(user) -> str:
    profile = getattr(user, "profile", None)
    return profile.role if profile else ""


@login_required
def home(request):
    role = _role(request.user)
    if role == Role.HOSPITAL_ADMIN:
        return redirect("ingest-summary")
    if role == Role.PATIENT:
        return redirect("portal-home")
    if role in (Role.CLINICIAN, Role.INGEST):
        return redirect("search")
    hospitals = Hospital.objects.annotate(n_studies=Count("studies")).order_by("code")
    return render(request, "viewer/overview.html", {"hospitals": hospitals, "role": role})


class CappedPaginator(Paginator):
    """A pager that counts at most ``cap`` matches: counting every study a broad search matches
    (a surname across a province) costs more than finding the first page. ``capped``: there are
    more; the page says so and asks to narrow the search."""

    cap = 1000

    @cached_property
    def matches(self) -> int:
        return self.object_list[: self.cap + 1].count()  # SELECT COUNT(*) FROM (… LIMIT cap + 1)

    @cached_property
    def count(self) -> int:
        return min(self.matches, self.cap)

    @property
    def capped(self) -> bool:
        return self.matches > self.cap


@login_required
def search(request):
    fields = {
        "PatientName": request.GET.get("name", "").strip(),
        "PatientID": request.GET.get("patient_id", "").strip(),
        "AccessionNumber": request.GET.get("accession", "").strip(),
        "ModalitiesInStudy": request.GET.get("modality", "").strip(),
    }
    date_from = request.GET.get("from", "").replace("-", "")
    date_to = request.GET.get("to", "").replace("-", "")
    if date_from or date_to:
        fields["StudyDate"] = f"{date_from}-{date_to}"
    if fields["PatientName"] and "*" not in fields["PatientName"]:
        fields["PatientName"] += "*"  # people type the beginning of a name
    searched = any(fields.values()) or _role(request.user) == Role.PATIENT
    error = ""
    page = target = federated = None
    if searched:
        try:
            cond = query.study_filter({k: v for k, v in fields.items() if v})
        except query.QueryError as exc:
            error = str(exc)
        else:
            # No DISTINCT (which would sort every match): the study filter joins nothing.
            qs = (policy.visible_studies(request.user).filter(cond)
                  .select_related("hospital").order_by("-study_date", "-id"))
            target = _one_patient(request.user, qs, fields["PatientID"])
            if target is not None and request.GET.get("refresh") == "1":
                # Refresh from the patient's hospitals' live archives first (issue #6): the page
                # below then shows what they hold now, through the same policy.
                # Its QUERY event is this search's (with the page's query): one event, not two.
                try:
                    federated = federated_search(request.user, target, refresh=True, channel="page",
                                                 details={"page": "search", "query": {k: v for k, v in fields.items() if v}})
                except PatientNotVisible:  # access ended since the search found them (audited)
                    target = None
            page = CappedPaginator(qs, 25).get_page(request.GET.get("page"))
            if federated is not None:
                for study in page.object_list:
                    study.freshness = federated.freshness_of(study)
            if federated is None:
                with transaction.atomic():
                    record(Event.QUERY, request.user, purpose=policy.purpose_for(request.user),
                           details={"page": "search", "query": {k: v for k, v in fields.items() if v},
                                    "results": page.paginator.count, "more": page.paginator.capped})
    return render(request, "viewer/search.html", {"page": page, "error": error, "form": request.GET, "searched": searched,
                                                  "target": target, "federated": federated,
                                                  "refresh_timeout": f"{settings.EXCHANGE_FEDERATED_SEARCH_TIMEOUT:g}"})


def _one_patient(user, visible, patient_id: str):
    """The one patient a search targets, or None: all the studies it finds (those the user may
    see) are one patient's; or, when it finds none, its exact Patient ID is one patient's local id
    whose index entry the user may see (e.g. registered here, studies not indexed yet)."""
    found = list(visible.order_by().values_list("patient_id", flat=True).distinct()[:2])
    if len(found) == 1:
        return surviving(Patient.objects.get(pk=found[0]))
    if found or not patient_id or "*" in patient_id or "?" in patient_id:
        return None
    owners = list(PatientIdentifier.objects.filter(local_id=patient_id).values_list("patient_id", flat=True).distinct()[:2])
    if len(owners) != 1:
        return None
    patient = surviving(Patient.objects.get(pk=owners[0]))
    return patient if patient_may_see(user, patient) else None


def _study_for(request, pk: int) -> Study:
    # A study its archive no longer holds (withdrawn by the sync) is gone, not refused.
    study = Study.objects.select_related("hospital", "patient").filter(pk=pk).exclude(availability=Availability.WITHDRAWN).first()
    if study is None:
        raise Http404("no such study")
    decision = policy.decide(request.user, study.patient, policy.purpose_for(request.user), study=study)
    if not decision.allowed:
        with transaction.atomic():
            record(Event.ACCESS_DENIED, request.user, Outcome.MINOR_FAILURE, study=study,
                   purpose=policy.purpose_for(request.user), details={"path": request.path, "reason": decision.reason})
        raise PermissionError(decision.reason)
    with transaction.atomic():
        record(Event.INSTANCES_ACCESSED, request.user, study=study, purpose=policy.purpose_for(request.user),
               basis=decision.basis, details={"path": request.path})
    return study


@login_required
def study_detail(request, pk: int):
    try:
        study = _study_for(request, pk)
    except PermissionError as exc:
        return denied_page(request, Study.objects.filter(pk=pk).first(), str(exc))
    series = Series.objects.filter(study=study).order_by("series_number", "id")
    first = {
        i.series_id: i
        for i in Instance.objects.filter(series__in=series).order_by("series_id", "-instance_number", "-id")
    }
    rows = [(s, first.get(s.pk)) for s in series]
    return render(request, "viewer/study.html", {"study": study, "rows": rows})


@login_required
def series_viewer(request, pk: int, series_pk: int):
    try:
        study = _study_for(request, pk)
    except PermissionError as exc:
        return denied_page(request, Study.objects.filter(pk=pk).first(), str(exc))
    series = Series.objects.filter(study=study, pk=series_pk).first()
    if series is None:
        raise Http404("no such series")
    instances = Instance.objects.filter(series=series).order_by("instance_number", "id")
    page = Paginator(instances, 1).get_page(request.GET.get("i"))
    window = request.GET.get("window", "")
    return render(request, "viewer/series.html", {
        "study": study, "series": series, "page": page, "instance": page.object_list[0] if page.object_list else None,
        "window": window, "presets": WINDOW_PRESETS.get(series.modality, []),
    })


@login_required
def ingest_summary(request):
    profile = getattr(request.user, "profile", None)
    if profile is None or profile.role != Role.HOSPITAL_ADMIN:
        return HttpResponseForbidden("Only hospital admins see the ingest summary.")
    hospital = profile.hospital
    notice = ""
    if request.method == "POST":
        upload = request.FILES.get("archive")
        if upload is None or not upload.name.lower().endswith(".zip"):
            notice = "Choose a ZIP file (the contents of a CD or USB stick)."
        else:
            token = upload_save(upload)
            transaction.on_commit(lambda: import_upload_task.delay(token, hospital.pk, request.user.pk))
            return redirect(reverse("ingest-summary") + "?queued=1")
    elif request.GET.get("queued"):
        notice = "Upload received: the import runs in the background; refresh to see it below."
    totals = Study.objects.filter(hospital=hospital).aggregate(
        studies=Count("id"), instances=Sum("num_instances"), bytes=Sum("total_bytes"))
    patients = Study.objects.filter(hospital=hospital).values("patient").distinct().count()
    batches = IngestBatch.objects.filter(hospital=hospital).select_related("actor")[:30]
    return render(request, "viewer/ingest.html", {"hospital": hospital, "totals": totals, "patients": patients,
                                                  "batches": batches, "notice": notice})
