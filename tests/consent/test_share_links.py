"""Share links: unguessable, expiring, PIN-protected, revocable; every use audited and shown to the patient."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from audit.models import AuditEvent, Event
from consent import services
from consent.models import ShareLink
from exchange.studies.models import Instance
from tests.consent.conftest import login

pytestmark = pytest.mark.django_db


def uses(link, action=None):
    qs = AuditEvent.objects.filter(event=Event.SHARE_LINK_USE, details__share_link=link.pk)
    return qs.filter(details__action=action) if action else qs


def test_patient_makes_a_link_with_qr_and_pin(world, settings):
    portal = login(world.actors["patient"])
    r = portal.post(f"/me/studies/{world.study.pk}/share/", {"hours": 24, "pin": "2468"})
    assert r.status_code == 302
    link = ShareLink.objects.get()
    token = link.token()
    assert len(token) >= 43 and token not in link.token_index and link.pin_hash and "2468" not in link.pin_hash
    assert timedelta(hours=23) < link.expires_at - timezone.now() <= timedelta(hours=24)
    page = portal.get(r["Location"]).content.decode()
    assert "<svg" in page and f"/s/{token}/" in page
    # another patient cannot make links to Wang's study
    assert login(world.actors["other_patient"]).post(f"/me/studies/{world.study.pk}/share/", {"hours": 24}).status_code == 404


def test_holder_with_pin_sees_images_and_every_use_is_audited(world):
    link, token = services.share_link_create(actor=world.actors["patient"], study=world.study, pin="2468")
    instance = Instance.objects.get(series__study=world.study)
    holder = Client()
    page = holder.get(f"/s/{token}/")
    assert page.status_code == 200 and b"/img/" not in page.content  # PIN first
    assert holder.get(f"/s/{token}/img/{instance.pk}/").status_code == 403
    assert holder.post(f"/s/{token}/", {"pin": "2468"}).status_code == 302
    page = holder.get(f"/s/{token}/").content.decode()
    assert f"/s/{token}/img/{instance.pk}/" in page
    img = holder.get(f"/s/{token}/img/{instance.pk}/")
    assert img.status_code == 200 and img["Content-Type"] == "image/jpeg" and img.content[:2] == b"\xff\xd8"
    assert uses(link, "page").exists() and uses(link, "image").exists() and uses(link, "pin_accepted").exists()
    assert uses(link, "image").first().basis == "share-link"
    # an instance of another study through this link: no
    other = Instance.objects.get(series__study=world.study_c)
    assert holder.get(f"/s/{token}/img/{other.pk}/").status_code == 404
    # the patient sees the uses
    history = login(world.actors["patient"]).get("/me/history/").content.decode()
    assert "Someone with your share link" in history
    assert "image" in login(world.actors["patient"]).get(f"/me/share/{link.pk}/").content.decode()


def test_wrong_pins_lock_the_link(world, settings):
    settings.SHARE_LINK_MAX_PIN_ATTEMPTS = 3
    link, token = services.share_link_create(actor=world.actors["patient"], study=world.study, pin="2468")
    attacker = Client()
    for _ in range(2):
        assert b"Wrong PIN" in attacker.post(f"/s/{token}/", {"pin": "0000"}).content
    assert attacker.post(f"/s/{token}/", {"pin": "0000"}).status_code == 403
    link.refresh_from_db()
    assert link.locked_at is not None and link.failed_pin_attempts == 3
    # locked: even the right PIN, from a fresh browser, is refused
    fresh = Client()
    assert fresh.post(f"/s/{token}/", {"pin": "2468"}).status_code == 403
    assert fresh.get(f"/s/{token}/").status_code == 403
    assert uses(link, "wrong_pin").count() == 3
    assert AuditEvent.objects.filter(event=Event.SECURITY_ALERT, details__share_link=link.pk).exists()


def test_revoked_and_expired_links_are_refused_and_audited(world):
    link, token = services.share_link_create(actor=world.actors["patient"], study=world.study)
    instance = Instance.objects.get(series__study=world.study)
    holder = Client()
    assert holder.get(f"/s/{token}/img/{instance.pk}/").status_code == 200
    login(world.actors["patient"]).post(f"/me/share/{link.pk}/revoke/")
    assert holder.get(f"/s/{token}/").status_code == 403
    assert holder.get(f"/s/{token}/img/{instance.pk}/").status_code == 403
    assert uses(link, "refused_revoked").exists() and uses(link, "image_refused").exists()
    link2, token2 = services.share_link_create(actor=world.actors["patient"], study=world.study)
    ShareLink.objects.filter(pk=link2.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert holder.get(f"/s/{token2}/").status_code == 410
    assert holder.get(f"/s/{token2}/img/{instance.pk}/").status_code == 403
    assert uses(link2, "refused_expired").exists()


def test_unknown_token_is_404_and_audited(world):
    r = Client().get("/s/not-a-real-token-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/")
    assert r.status_code == 404
    ev = AuditEvent.objects.filter(event=Event.ACCESS_DENIED).last()
    assert ev.details["reason"] == "unknown share link" and "not-a-real" not in str(ev.details)


def test_a_share_link_opens_no_dicomweb_or_viewer_page(world):
    link, token = services.share_link_create(actor=world.actors["patient"], study=world.study)
    holder = Client()
    holder.get(f"/s/{token}/")
    assert holder.get(f"/studies/{world.study.pk}/").status_code == 302
    assert holder.get(f"/dicomweb/studies/{world.study.study_instance_uid}/metadata").status_code == 401


def test_the_patients_link_page_is_audited_naming_the_study(world):
    """The link's page shows the study and who used the link: a read of the patient's record,
    audited like the other portal pages with the study it concerns (PS3.15 A.5.3 Query)."""
    link, _ = services.share_link_create(actor=world.actors["patient"], study=world.study)
    assert login(world.actors["patient"]).get(f"/me/share/{link.pk}/").status_code == 200
    event = AuditEvent.objects.filter(event=Event.QUERY, details__page="portal_share").last()
    assert event is not None, "the link's page wrote no audit event"
    assert event.actor_id == world.actors["patient"].pk
    assert event.study_id == world.study.pk and event.patient_id == world.study.patient_id
    assert event.details["share_link"] == link.pk
