"""Pages for data stewards: the review queue of possible matches (issue #3).

Hospital admins see the items that touch their hospital and decide those whose new identifier is
their hospital's; staff accounts (the platform's data stewards) see and decide all. Every view
shows patient data and is audited before it renders; every decision is audited by the service."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.http import Http404, HttpResponseForbidden
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from audit import record
from audit.models import Event
from exchange.mpi import selectors, services
from exchange.mpi.models import ReviewStatus


@login_required
def review_list(request):
    if not selectors.may_review(request.user):
        return HttpResponseForbidden("only hospital admins and data stewards review patient matches")
    status = request.GET.get("status", ReviewStatus.OPEN)
    if status not in ReviewStatus.values:
        status = ReviewStatus.OPEN
    page = Paginator(selectors.review_items_for(request.user, status=status), 50).get_page(request.GET.get("page"))
    with transaction.atomic():
        record(Event.QUERY, request.user, details={"page": "mpi-review", "status": status,
                                                   "results": page.paginator.count,
                                                   "items": [item.pk for item in page.object_list]})
    return render(request, "mpi/review_list.html", {"page": page, "status": status, "statuses": ReviewStatus.choices})


def _side(identifier) -> dict:
    return {
        "identifier": identifier,
        "hospital": identifier.hospital,
        "enterprise_id": identifier.patient.enterprise_id,
        "studies": identifier.studies.count(),
        "ric_masked": identifier.ric_masked,
        "phone_masked": identifier.phone_masked,
    }


@login_required
@require_http_methods(["GET", "POST"])
def review_detail(request, pk: int):
    if not selectors.may_review(request.user):
        return HttpResponseForbidden("only hospital admins and data stewards review patient matches")
    item = selectors.review_items_for(request.user, status=None).filter(pk=pk).first()
    if item is None:
        raise Http404("no such review item")
    if request.method == "POST":
        action = request.POST.get("action")
        comment = request.POST.get("comment", "").strip()
        decide = {"accept": services.review_accept, "reject": services.review_reject}.get(action)
        if decide is None:
            messages.error(request, "choose accept or reject")
            return redirect("mpi-review-detail", pk=pk)
        try:
            decide(item=item, actor=request.user, comment=comment)
        except PermissionDenied:
            return HttpResponseForbidden("this item belongs to another hospital's steward")
        except ValidationError as exc:
            messages.error(request, "; ".join(exc.messages))
            return redirect("mpi-review-detail", pk=pk)
        messages.success(request, f"Review #{pk} {'accepted: records linked' if action == 'accept' else 'rejected: kept apart'}.")
        return redirect("mpi-review")
    left, right = _side(item.identifier), _side(item.candidate)
    with transaction.atomic():
        record(Event.PATIENT_RECORD, request.user, patient=item.identifier.patient,
               details={"page": "mpi-review", "action": "view", "review": item.pk,
                        "identifiers": [item.identifier_id, item.candidate_id],
                        "patients": [str(left["enterprise_id"]), str(right["enterprise_id"])]})
    return render(request, "mpi/review_detail.html", {
        "item": item, "left": left, "right": right,
        "may_decide": item.status == ReviewStatus.OPEN and selectors.may_steward(request.user, item.identifier),
    })
