"""{% consent_panel %}: a clinician's way to ask for access, and the answers to their requests."""

from django import template

from consent.models import AccessRequest

register = template.Library()


@register.inclusion_tag("consent/_clinician_panel.html", takes_context=True)
def consent_panel(context):
    user = context["request"].user
    profile = getattr(user, "profile", None) if user.is_authenticated else None
    if profile is None or profile.role != "clinician":
        return {"show": False}
    requests = AccessRequest.objects.filter(requester=user).order_by("-created_at")[:5]
    return {"show": True, "requests": requests}
