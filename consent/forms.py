from django import forms
from django.conf import settings

from consent.models import BreakGlassReason, Scope
from hospitals.models import Hospital, Role


class PhoneForm(forms.Form):
    phone = forms.CharField(label="Mobile number", max_length=20,
                            widget=forms.TextInput(attrs={"inputmode": "tel", "autocomplete": "tel", "placeholder": "138 0000 0000"}))


class CodeForm(forms.Form):
    code = forms.CharField(label="Code from the SMS", max_length=6, min_length=6,
                           widget=forms.TextInput(attrs={"inputmode": "numeric", "autocomplete": "one-time-code"}))


class ClinicianChoice(forms.ModelChoiceField):
    def label_from_instance(self, user):
        hospital = user.profile.hospital
        return f"Dr {user.get_full_name() or user.get_username()} — {hospital.name if hospital else ''}"


EXPIRY_CHOICES = [("", "Until I withdraw it"), ("1", "1 day"), ("7", "7 days"), ("30", "30 days"), ("365", "1 year")]


class GrantForm(forms.Form):
    scope = forms.ChoiceField(label="Who may see my images", choices=Scope.choices, initial=Scope.HOSPITAL)
    hospital = forms.ModelChoiceField(label="Hospital", queryset=Hospital.objects.order_by("name"), required=False)
    clinician = ClinicianChoice(label="Clinician", required=False, queryset=None)
    modalities = forms.CharField(label="Only these kinds of images (e.g. CT, MR; empty: all)", required=False, max_length=60)
    date_from = forms.DateField(label="Only studies from", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(label="until", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    expires_in_days = forms.ChoiceField(label="For how long", choices=EXPIRY_CHOICES, required=False)
    deny = forms.BooleanField(label="Refuse instead of allow", required=False)

    def __init__(self, *args, **kwargs):
        from django.contrib.auth import get_user_model

        super().__init__(*args, **kwargs)
        self.fields["clinician"].queryset = (get_user_model().objects.filter(profile__role=Role.CLINICIAN)
                                             .select_related("profile__hospital").order_by("profile__hospital__name", "username"))
        if settings.CONSENT_DEFAULT != "opt-out":
            del self.fields["deny"]

    def clean(self):
        data = super().clean()
        if data.get("scope") == Scope.HOSPITAL and not data.get("hospital"):
            self.add_error("hospital", "Choose the hospital.")
        if data.get("scope") == Scope.CLINICIAN and not data.get("clinician"):
            self.add_error("clinician", "Choose the clinician.")
        return data


class ShareForm(forms.Form):
    hours = forms.TypedChoiceField(label="Link works for", coerce=int,
                                   choices=[(24, "1 day"), (72, "3 days"), (168, "7 days"), (720, "30 days")])
    pin = forms.CharField(label="PIN (optional, 4-8 digits; tell it to the doctor separately)", required=False, max_length=8,
                          widget=forms.TextInput(attrs={"inputmode": "numeric", "autocomplete": "off"}))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["hours"].initial = settings.SHARE_LINK_HOURS
        if settings.SHARE_LINK_HOURS not in dict(self.fields["hours"].choices):
            self.fields["hours"].choices = [(settings.SHARE_LINK_HOURS, f"{settings.SHARE_LINK_HOURS} hours")] + list(self.fields["hours"].choices)


class PinForm(forms.Form):
    pin = forms.CharField(label="PIN", max_length=8, widget=forms.PasswordInput(attrs={"inputmode": "numeric"}))


class PatientLookupForm(forms.Form):
    """A clinician names the patient by study (from a refused page) or identity card number."""

    ric = forms.CharField(label="Resident identity card number", required=False, max_length=18)


class AccessRequestForm(PatientLookupForm):
    reason = forms.CharField(label="Why do you need these images?", widget=forms.Textarea(attrs={"rows": 3}), max_length=2000)


class BreakGlassForm(PatientLookupForm):
    reason = forms.ChoiceField(label="Emergency reason", choices=BreakGlassReason.choices)
    reason_text = forms.CharField(label="Describe the situation", widget=forms.Textarea(attrs={"rows": 3}), max_length=2000,
                                  min_length=10)
