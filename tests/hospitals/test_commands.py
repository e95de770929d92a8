"""Operator commands: add_hospital, create_user, drf_create_token."""

import io

import pytest
from django.contrib.auth import authenticate
from django.core.management import CommandError, call_command

from hospitals.models import Hospital

pytestmark = pytest.mark.django_db


def run(*args, stdin: str | None = None, monkeypatch=None) -> str:
    out = io.StringIO()
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    call_command(*args, stdout=out)
    return out.getvalue()


def test_add_hospital_and_accounts(monkeypatch):
    assert "added hospital PPH" in run("add_hospital", "pph", "--name", "Provincial People's Hospital", "--authority", "PPH-MRN")
    hospital = Hospital.objects.get(code="PPH")
    assert (hospital.assigning_authority, hospital.ae_title) == ("PPH-MRN", "PPH")
    out = run("create_user", "dr_wang", "--role", "clinician", "--hospital", "PPH", "--password-stdin",
              stdin="a-long-passphrase-1\n", monkeypatch=monkeypatch)
    assert "created clinician account dr_wang at PPH" in out
    user = authenticate(username="dr_wang", password="a-long-passphrase-1")
    assert user is not None and user.profile.hospital == hospital
    token = io.StringIO()
    call_command("drf_create_token", "dr_wang", stdout=token)
    assert "Generated token" in token.getvalue()


@pytest.mark.parametrize(
    "args, message",
    [
        (["create_user", "x", "--role", "clinician"], "needs a hospital"),
        (["create_user", "x", "--role", "clinician", "--hospital", "NOPE"], "no hospital with code"),
        (["create_user", "x", "--role", "regulator", "--hospital", "PPH"], "does not belong to a hospital"),
        (["create_user", "x", "--role", "patient"], "needs the patient"),
    ],
)
def test_create_user_refuses_inconsistent_roles(monkeypatch, args, message):
    run("add_hospital", "PPH", "--name", "P")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(CommandError, match=message):
        call_command(*args)


def test_weak_password_and_bad_codes_are_refused(monkeypatch):
    run("add_hospital", "PPH", "--name", "P")
    with pytest.raises(CommandError, match="too short"):
        run("create_user", "y", "--role", "regulator", "--password-stdin", stdin="short\n", monkeypatch=monkeypatch)
    with pytest.raises(CommandError):
        call_command("add_hospital", "bad code!", "--name", "X")
    with pytest.raises(CommandError):
        call_command("add_hospital", "PPH", "--name", "Again")  # duplicate code
