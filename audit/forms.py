"""Forms of the regulator's pages, and the break-glass review write (issue #4)."""

from datetime import timedelta

from django import forms
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit import record
from audit.exports import ExportFormat
from audit.models import AuditEvent, BreakGlassReview, Event, Outcome, ReviewStatus
from audit.reports import default_period
from audit.selectors import EventFilters
from consent.policy import Purpose
from hospitals.models import Hospital

# A dashboard period longer than this is refused: the charts have one bar group per month.
MAX_PERIOD = timedelta(days=5 * 366)


class DateInput(forms.DateInput):
    input_type = "date"


class EventSearchForm(forms.Form):
    """Search of the trail. Query parameter names are the field names (also used by exports)."""

    patient = forms.UUIDField(required=False, label="Patient (enterprise id)")
    actor = forms.CharField(required=False, max_length=150, label="Actor (username)")
    hospital = forms.ModelChoiceField(Hospital.objects.order_by("code"), required=False, to_field_name="code",
                                      empty_label="any", label="Hospital (acting or holding)")
    date_from = forms.DateField(required=False, label="From", widget=DateInput)
    date_to = forms.DateField(required=False, label="To", widget=DateInput)
    event = forms.ChoiceField(choices=[("", "any"), *Event.choices], required=False)
    outcome = forms.ChoiceField(choices=[("", "any"), *Outcome.choices], required=False)

    def clean_patient(self):
        from exchange.mpi.models import Patient

        enterprise_id = self.cleaned_data["patient"]
        if enterprise_id is None:
            return None
        patient = Patient.objects.filter(enterprise_id=enterprise_id).first()
        if patient is None:
            raise ValidationError("No patient has this enterprise id.")
        return patient

    def clean(self):
        data = super().clean()
        if data.get("date_from") and data.get("date_to") and data["date_from"] > data["date_to"]:
            raise ValidationError("The start date is after the end date.")
        return data

    def filters(self) -> EventFilters:
        data = self.cleaned_data
        return EventFilters(patient=data.get("patient"), actor=data.get("actor", "").strip(),
                            hospital=data.get("hospital"), date_from=data.get("date_from"),
                            date_to=data.get("date_to"), event=data.get("event", ""), outcome=data.get("outcome", ""))


class ExportForm(EventSearchForm):
    format = forms.ChoiceField(choices=ExportFormat.choices)


class PeriodForm(forms.Form):
    """The dashboard's period: local calendar days, both included; default the last 12 months."""

    date_from = forms.DateField(required=False, label="From", widget=DateInput)
    date_to = forms.DateField(required=False, label="To", widget=DateInput)

    def clean(self):
        data = super().clean()
        default_from, default_to = default_period()
        data["date_from"] = data.get("date_from") or default_from
        data["date_to"] = data.get("date_to") or default_to
        if data["date_from"] > data["date_to"]:
            raise ValidationError("The start date is after the end date.")
        if data["date_to"] - data["date_from"] > MAX_PERIOD:
            raise ValidationError("Choose a period of at most five years.")
        return data


class BreakGlassReviewForm(forms.Form):
    event = forms.IntegerField(widget=forms.HiddenInput)
    status = forms.ChoiceField(choices=ReviewStatus.choices)
    comment = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))

    def clean(self):
        data = super().clean()
        if data.get("status") == ReviewStatus.FLAGGED and not data.get("comment", "").strip():
            raise ValidationError("Say why the access is flagged.")
        return data


def break_glass_review_create(*, event_id: int, status: str, comment: str, reviewer) -> BreakGlassReview:
    """Record a regulator's review of one break-glass event, and audit it in the same transaction.

    The trail's copy (ADMIN_CHANGE, details.action "break_glass_review", with status and comment)
    is the tamper-evident one; the review row serves the queue.
    """
    if status not in ReviewStatus.values:
        raise ValidationError(f"unknown review status {status!r}")
    comment = comment.strip()
    with transaction.atomic():
        event = (AuditEvent.objects.filter(pk=event_id, event=Event.BREAK_GLASS)
                 .select_related("patient", "study").first())
        if event is None:
            raise ValidationError("No such break-glass event.")
        try:
            with transaction.atomic():
                review = BreakGlassReview.objects.create(event=event, status=status, comment=comment,
                                                         reviewer=reviewer, reviewed_at=timezone.now())
        except IntegrityError:
            raise ValidationError(f"Event #{event.seq or event.pk} has already been reviewed.") from None
        record(Event.ADMIN_CHANGE, reviewer, patient=event.patient, study=event.study, purpose=Purpose.OVERSIGHT,
               details={"action": "break_glass_review", "event_seq": event.seq, "event_id": event.pk, "status": status,
                        "comment": comment})
    return review
