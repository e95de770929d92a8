"""The policy on every read path: QIDO filters (totals and errors say nothing of hidden studies),
WADO refuses with a reason, UIDs and primary keys of another hospital's study are never enough."""

import pytest

from audit.models import AuditEvent, Event
from consent import services
from consent.models import Scope
from exchange.studies.models import Instance, Series
from tests.consent.conftest import login
from tests.conftest import api

pytestmark = pytest.mark.django_db


def test_qido_hides_other_hospitals_studies_without_consent(world):
    dr = world.actors["clinician_no_consent"]
    uid = world.study.study_instance_uid
    client = api(dr)
    assert client.get("/dicomweb/studies", {"StudyInstanceUID": uid}).json() == []
    assert client.get("/dicomweb/studies", {"PatientID": "PPH0001"}).json() == []
    assert client.get(f"/dicomweb/studies/{uid}/series").json() == []
    assert client.get(f"/dicomweb/studies/{uid}/instances").json() == []
    # same answer as a UID that does not exist at all
    assert client.get("/dicomweb/studies/1.2.3.4.5/series").json() == []
    body = client.get("/dicomweb/studies").json()
    assert uid not in str(body)
    ev = AuditEvent.objects.filter(event=Event.QUERY, actor=dr).last()
    assert ev.details["results"] == len(body)
    # with consent the same query finds it
    services.consent_grant(actor=world.actors["patient"], patient=world.patient, scope=Scope.CLINICIAN, clinician=dr)
    assert uid in str(client.get("/dicomweb/studies", {"StudyInstanceUID": uid}).json())


def test_wado_refuses_with_a_reason_and_audits(world):
    dr = world.actors["clinician_expired"]
    series = Series.objects.get(study=world.study)
    instance = Instance.objects.get(series=series)
    base = f"/dicomweb/studies/{world.study.study_instance_uid}"
    for url in (base, f"{base}/metadata", f"{base}/series/{series.series_instance_uid}",
                f"{base}/series/{series.series_instance_uid}/instances/{instance.sop_instance_uid}/rendered"):
        r = api(dr).get(url)
        assert r.status_code == 403 and "consent" in r.json()["error"], url
    assert AuditEvent.objects.filter(event=Event.ACCESS_DENIED, actor=dr, study=world.study).count() == 4


def test_no_idor_through_pks_or_uids(world):
    dr = world.actors["clinician_revoked"]
    series = Series.objects.get(study=world.study)
    client = login(dr)
    assert client.get(f"/studies/{world.study.pk}/").status_code == 403
    assert client.get(f"/studies/{world.study.pk}/series/{series.pk}/").status_code == 403
    # a series pk of the hidden study under a study the doctor may see is not found
    own = world.study_li
    assert client.get(f"/studies/{own.pk}/series/{series.pk}/").status_code == 404
    # a series UID of the hidden study under the doctor's own study UID: nothing
    r = api(dr).get(f"/dicomweb/studies/{own.study_instance_uid}/series/{series.series_instance_uid}/metadata")
    assert r.status_code == 404


def test_consent_link_for_one_study_does_not_open_the_other(world):
    dr = world.actors["clinician_no_consent"]
    services.consent_grant(actor=world.actors["patient"], patient=world.patient, scope=Scope.CLINICIAN, clinician=dr,
                           study=world.study_c)
    client = api(dr)
    assert client.get(f"/dicomweb/studies/{world.study_c.study_instance_uid}/metadata").status_code == 200
    assert client.get(f"/dicomweb/studies/{world.study.study_instance_uid}/metadata").status_code == 403
