"""consent.policy: decide() and visible_studies() state one rule; revocation and expiry apply at once."""

from datetime import date, timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent, Event
from consent import policy, services
from consent.models import BreakGlass, Consent, ConsentVersion, Scope
from exchange.studies.models import Study


pytestmark = pytest.mark.django_db


def agree(actor):
    """decide() and visible_studies() agree for every study; returns the visible pks."""
    visible = set(policy.visible_studies(actor).values_list("pk", flat=True))
    for study in Study.objects.select_related("patient"):
        decision = policy.decide(actor, study.patient, policy.purpose_for(actor), study=study)
        assert decision.allowed == (study.pk in visible), (actor, study.pk, decision)
    return visible


def test_decide_and_visible_studies_agree_for_every_actor_and_study(world, settings):
    for mode in ("opt-in", "opt-out"):
        settings.CONSENT_DEFAULT = mode
        for actor in world.actors.values():
            agree(actor)
        # a few narrowed and denying directives on top
        p = world.actors["patient"]
        services.consent_grant(actor=p, patient=world.patient, scope=Scope.HOSPITAL, hospital=world.hospital_b, modalities="MR")
        services.consent_grant(actor=p, patient=world.patient, scope=Scope.NETWORK, date_from=date(2026, 1, 1), date_to=date(2026, 1, 31))
        for actor in world.actors.values():
            agree(actor)
        Consent.objects.filter(patient=world.patient, modalities="MR").update(revoked_at=timezone.now())


def test_bases(world):
    a = world.actors
    d = lambda who, study=world.study: policy.decide(a[who], study.patient, policy.purpose_for(a[who]), study=study)  # noqa: E731
    assert d("clinician_source").basis == policy.Basis.OWN_HOSPITAL
    consent = Consent.objects.get(clinician=a["clinician_consent"])
    assert d("clinician_consent").basis == f"consent:{consent.pk}"
    assert d("clinician_break_glass").basis == "break-glass" and d("clinician_break_glass").valid_until
    assert d("patient").basis == policy.Basis.PATIENT_SELF
    for who in ("clinician_no_consent", "clinician_expired", "clinician_revoked", "other_patient", "regulator"):
        assert not d(who), who
    assert "consent" in d("clinician_no_consent").reason
    # the hospital admin sees its own hospital's study but never another's, even with a network consent
    services.consent_grant(actor=a["patient"], patient=world.patient, scope=Scope.NETWORK)
    assert d("hospital_admin").allowed and not d("hospital_admin", world.study_c).allowed
    over = policy.decide(a["regulator"], world.patient, policy.Purpose.OVERSIGHT)
    assert over.allowed and over.basis == "oversight"
    # the purpose must fit the role
    assert not policy.decide(a["clinician_source"], world.patient, policy.Purpose.OVERSIGHT, study=world.study)


def test_revocation_applies_on_the_next_call(world):
    a = world.actors
    dr = a["clinician_no_consent"]
    consent = services.consent_grant(actor=a["patient"], patient=world.patient, scope=Scope.HOSPITAL, hospital=world.hospital_b)
    assert policy.decide(dr, world.patient, "treatment", study=world.study).basis == f"consent:{consent.pk}"
    assert world.study in policy.visible_studies(dr)
    services.consent_revoke(actor=a["patient"], consent=consent)
    assert not policy.decide(dr, world.patient, "treatment", study=world.study)
    assert world.study not in policy.visible_studies(dr)
    versions = list(ConsentVersion.objects.filter(consent=consent).values_list("version", "change"))
    assert versions == [(1, "granted"), (2, "revoked")]
    assert AuditEvent.objects.filter(event=Event.CONSENT_CHANGE, details__consent=consent.pk).count() == 2


def test_narrowed_consent(world):
    a = world.actors
    dr = a["clinician_no_consent"]
    services.consent_grant(actor=a["patient"], patient=world.patient, scope=Scope.CLINICIAN, clinician=dr, modalities="mr")
    assert not policy.decide(dr, world.patient, "treatment", study=world.study)  # CT
    assert policy.decide(dr, world.patient, "treatment", study=world.study_c)  # MR
    assert set(policy.visible_studies(dr)) == {world.study_li, world.study_c}  # own hospital + the MR
    only = services.consent_grant(actor=a["patient"], patient=world.patient, scope=Scope.CLINICIAN, clinician=dr, study=world.study)
    assert policy.decide(dr, world.patient, "treatment", study=world.study).basis == f"consent:{only.pk}"


def test_opt_out_default_and_objection(world, settings):
    settings.CONSENT_DEFAULT = "opt-out"
    a = world.actors
    dr = a["clinician_no_consent"]
    assert policy.decide(dr, world.patient, "treatment", study=world.study).basis == "opt-out-default"
    settings.CONSENT_DEFAULT = "opt-in"
    assert not policy.decide(dr, world.patient, "treatment", study=world.study)
    settings.CONSENT_DEFAULT = "opt-out"
    services.consent_grant(actor=a["patient"], patient=world.patient, scope=Scope.NETWORK, action="deny")
    assert not policy.decide(dr, world.patient, "treatment", study=world.study)
    assert world.study not in policy.visible_studies(dr)
    # break-glass still opens, own hospital still sees
    assert policy.decide(a["clinician_break_glass"], world.patient, "treatment", study=world.study).basis == "break-glass"
    assert policy.decide(a["clinician_source"], world.patient, "treatment", study=world.study).basis == "own_hospital"


def test_break_glass_is_for_one_patient_and_expires(world):
    dr = world.actors["clinician_break_glass"]
    assert policy.decide(dr, world.patient, "treatment", study=world.study_c)
    assert not policy.decide(dr, world.other, "treatment", study=world.study_li) or world.study_li.hospital_id == dr.profile.hospital_id
    event = AuditEvent.objects.get(event=Event.BREAK_GLASS, actor=dr)
    assert event.patient_id == world.patient.pk and event.details["flagged"] is True and event.basis == "break-glass"
    assert event.details["reason"] == "unconscious"
    BreakGlass.objects.filter(actor=dr).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert not policy.decide(dr, world.patient, "treatment", study=world.study)
    assert world.study not in policy.visible_studies(dr)


def test_only_patient_manages_consents(world):
    from django.core.exceptions import PermissionDenied

    with pytest.raises(PermissionDenied):
        services.consent_grant(actor=world.actors["other_patient"], patient=world.patient, scope=Scope.NETWORK)
    with pytest.raises(PermissionDenied):
        services.consent_grant(actor=world.actors["clinician_no_consent"], patient=world.patient, scope=Scope.NETWORK)
    with pytest.raises(PermissionDenied):
        services.break_glass_open(actor=world.actors["hospital_admin"], patient=world.patient, reason="other", reason_text="x" * 20)


def test_share_link_bearer_sees_one_study_only(world):
    link, _ = services.share_link_create(actor=world.actors["patient"], study=world.study)
    bearer = policy.ShareLinkBearer(link=link, pin_verified=True)
    assert policy.decide(bearer, world.patient, "treatment", study=world.study).basis == "share-link"
    assert not policy.decide(bearer, world.patient, "treatment", study=world.study_c)
    assert list(policy.visible_studies(bearer)) == [world.study]
    services.share_link_revoke(actor=world.actors["patient"], link=link)
    link.refresh_from_db()
    bearer = policy.ShareLinkBearer(link=link, pin_verified=True)
    assert not policy.decide(bearer, world.patient, "treatment", study=world.study)
    assert not policy.visible_studies(bearer).exists()


def test_a_study_withdrawn_by_its_archive_is_seen_by_nobody(world, settings):
    from exchange.studies.models import Availability

    settings.CONSENT_DEFAULT = "opt-out"
    services.consent_grant(actor=world.actors["patient"], patient=world.patient, scope=Scope.NETWORK)
    assert world.study.pk in agree(world.actors["clinician_source"])
    Study.objects.filter(pk=world.study.pk).update(availability=Availability.WITHDRAWN)
    for who, actor in world.actors.items():
        assert world.study.pk not in agree(actor), who
    study = Study.objects.get(pk=world.study.pk)
    decision = policy.decide(world.actors["clinician_break_glass"], study.patient, policy.Purpose.TREATMENT, study=study)
    assert not decision and "no longer holds" in decision.reason
    # the patient's other studies are unaffected
    assert world.study_c.pk in agree(world.actors["patient"])
