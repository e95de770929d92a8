from django import forms

from hospitals.models import EndpointAuth, EndpointKind, RetrieveMethod


class EndpointForm(forms.Form):
    kind = forms.ChoiceField(choices=EndpointKind.choices)
    name = forms.CharField(max_length=100, initial="PACS")
    qido_url = forms.URLField(label="QIDO-RS root URL", required=False, assume_scheme="https", max_length=500,
                              help_text="e.g. https://pacs.example.org/dicom-web")
    wado_url = forms.URLField(label="WADO-RS root URL", required=False, assume_scheme="https", max_length=500, help_text="empty: same as QIDO-RS")
    stow_url = forms.URLField(label="STOW-RS root URL", required=False, assume_scheme="https", max_length=500)
    auth = forms.ChoiceField(choices=EndpointAuth.choices, initial=EndpointAuth.NONE)
    username = forms.CharField(max_length=150, required=False)
    secret = forms.CharField(label="Password or token", required=False, widget=forms.PasswordInput(render_value=False))
    verify_tls = forms.BooleanField(label="Verify TLS certificates", required=False, initial=True)
    timeout = forms.IntegerField(label="Timeout (seconds)", min_value=1, max_value=600, initial=30)
    remote_ae_title = forms.CharField(label="Archive AE title", max_length=16, required=False)
    host = forms.CharField(max_length=255, required=False)
    port = forms.IntegerField(min_value=1, max_value=65535, required=False)
    calling_ae_title = forms.CharField(label="Platform's AE title", max_length=16, required=False,
                                       help_text="empty: the hospital's AE title registered with the platform")
    retrieve_method = forms.ChoiceField(choices=RetrieveMethod.choices, initial=RetrieveMethod.C_GET)
