"""Member hospitals and platform accounts."""

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction

from audit import record
from audit.models import Event
from hospitals.models import HOSPITAL_ROLES, Hospital, Profile, Role


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
