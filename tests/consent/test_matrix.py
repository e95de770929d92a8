"""The authorization matrix: every URL pattern of the site (found by walking the resolver, so a
new URL is covered automatically) × every kind of actor, checked against ONE expectation table.

A URL pattern missing from TABLE fails the test. Outcomes:
  found  200 and the target (Wang's CT at hospital A) is in the answer
  empty  200 and the target is not in the answer (filtered search: no hint of hidden studies)
  ok     200                        deny   403               gone  404 (not yours / not there)
  login  302 to a login page        unauth 401 (API without credentials)
  redir  302 elsewhere              refused 302/401/403 (pages whose own tests cover roles)
  405    method not allowed
"""

from dataclasses import dataclass

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.urls.resolvers import RoutePattern

from consent import services
from consent.models import Scope
from exchange.studies.models import Instance, Series
from tests.consent.conftest import PASSWORD

pytestmark = pytest.mark.django_db

ACTORS = ["anonymous", "patient", "other_patient", "clinician_source", "clinician_no_consent", "clinician_consent",
          "clinician_expired", "clinician_revoked", "clinician_break_glass", "hospital_admin", "regulator", "share_link"]
# Who may see Wang's CT at hospital A, and who may not (consent.policy's rules).
SEES = ["patient", "clinician_source", "clinician_consent", "clinician_break_glass", "hospital_admin"]
NOT_SEES = ["other_patient", "clinician_no_consent", "clinician_expired", "clinician_revoked", "regulator"]
ANON = ["anonymous", "share_link"]
CLINICIANS = ["clinician_source", "clinician_no_consent", "clinician_consent", "clinician_expired",
              "clinician_revoked", "clinician_break_glass"]
STAFF = CLINICIANS + ["hospital_admin", "regulator"]
LOGGED_IN = [a for a in ACTORS if a not in ANON]
ROLE_GATED = "not patient-data of the consent matrix / covered by its own tests"


def row(method="GET", url=None, **groups):
    """groups: outcome=[actors]; every actor must get exactly one outcome."""
    expect = {}
    for outcome, actors in groups.items():
        for actor in actors:
            assert actor not in expect, f"{actor} twice in one row"
            expect[actor] = outcome.removeprefix("_")
    return {"method": method, "url": url, "expect": expect}


def study_read(suffix=""):
    return row(url=lambda c: f"/dicomweb/studies/{c.study_uid}{suffix.format(**c.__dict__)}", ok=SEES, deny=NOT_SEES, unauth=ANON)


def qido(url):
    return row(url=url, found=SEES, empty=NOT_SEES, unauth=ANON)


TABLE = {
    # --- viewer pages ---
    "": row(url="/", _redir=[a for a in LOGGED_IN if a != "regulator"], ok=["regulator"], login=ANON),
    "search/": row(url=lambda c: f"/search/?patient_id=PPH0001", found=SEES, empty=NOT_SEES, login=ANON),
    "studies/<int:pk>/": row(url=lambda c: f"/studies/{c.study_pk}/", ok=SEES, deny=NOT_SEES, login=ANON),
    "studies/<int:pk>/series/<int:series_pk>/": row(url=lambda c: f"/studies/{c.study_pk}/series/{c.series_pk}/",
                                                    ok=SEES, deny=NOT_SEES, login=ANON),
    "hospital/ingest/": row(url="/hospital/ingest/", ok=["hospital_admin"],
                            deny=[a for a in LOGGED_IN if a != "hospital_admin"], login=ANON),
    "accounts/login/": row(url="/accounts/login/", ok=ACTORS),
    "accounts/logout/": row(url="/accounts/logout/", **{"405": ACTORS}),
    # --- DICOMweb: QIDO filtered, WADO refused with a reason ---
    "dicomweb/studies": qido(lambda c: "/dicomweb/studies"),
    "dicomweb/series": qido(lambda c: "/dicomweb/series"),
    "dicomweb/instances": qido(lambda c: "/dicomweb/instances"),
    "dicomweb/^studies/(?P<study_uid>[0-9.]{1,64})$": study_read(),
    "dicomweb/^studies/(?P<study_uid>[0-9.]{1,64})/metadata$": study_read("/metadata"),
    "dicomweb/^studies/(?P<study_uid>[0-9.]{1,64})/series$": qido(lambda c: f"/dicomweb/studies/{c.study_uid}/series"),
    "dicomweb/^studies/(?P<study_uid>[0-9.]{1,64})/instances$": qido(lambda c: f"/dicomweb/studies/{c.study_uid}/instances"),
    "dicomweb/^studies/(?P<study_uid>[0-9.]{1,64})/series/(?P<series_uid>[0-9.]{1,64})$": study_read("/series/{series_uid}"),
    "dicomweb/^studies/(?P<study_uid>[0-9.]{1,64})/series/(?P<series_uid>[0-9.]{1,64})/metadata$":
        study_read("/series/{series_uid}/metadata"),
    "dicomweb/^studies/(?P<study_uid>[0-9.]{1,64})/series/(?P<series_uid>[0-9.]{1,64})/instances$":
        qido(lambda c: f"/dicomweb/studies/{c.study_uid}/series/{c.series_uid}/instances"),
    "dicomweb/^studies/(?P<study_uid>[0-9.]{1,64})/series/(?P<series_uid>[0-9.]{1,64})/instances/(?P<sop_uid>[0-9.]{1,64})$":
        study_read("/series/{series_uid}/instances/{sop_uid}"),
    "dicomweb/^studies/(?P<study_uid>[0-9.]{1,64})/series/(?P<series_uid>[0-9.]{1,64})/instances/(?P<sop_uid>[0-9.]{1,64})/metadata$":
        study_read("/series/{series_uid}/instances/{sop_uid}/metadata"),
    "dicomweb/^studies/(?P<study_uid>[0-9.]{1,64})/series/(?P<series_uid>[0-9.]{1,64})/instances/(?P<sop_uid>[0-9.]{1,64})/rendered$":
        study_read("/series/{series_uid}/instances/{sop_uid}/rendered"),
    "dicomweb/^studies/(?P<study_uid>[0-9.]{1,64})/series/(?P<series_uid>[0-9.]{1,64})/instances/(?P<sop_uid>[0-9.]{1,64})/frames/(?P<frames>[0-9,]{1,200})$":
        study_read("/series/{series_uid}/instances/{sop_uid}/frames/1"),
    "dicomweb/^studies/(?P<study_uid>[0-9.]{1,64})/series/(?P<series_uid>[0-9.]{1,64})/instances/(?P<sop_uid>[0-9.]{1,64})/frames/(?P<frame>[0-9]{1,6})/rendered$":
        study_read("/series/{series_uid}/instances/{sop_uid}/frames/1/rendered"),
    # --- patient portal ---
    "me/login/": row(url="/me/login/", redir=["patient", "other_patient"], ok=STAFF + ANON),
    "me/login/code/": row(url="/me/login/code/", redir=ACTORS),
    "me/": row(url="/me/", found=["patient"], empty=["other_patient"], deny=STAFF, login=ANON),
    "me/consents/": row(url="/me/consents/", ok=["patient", "other_patient"], deny=STAFF, login=ANON),
    "me/consents/<int:pk>/revoke/": row("POST", lambda c: f"/me/consents/{c.fresh_consent()}/revoke/",
                                        redir=["patient"], gone=["other_patient"], deny=STAFF, login=ANON),
    "me/requests/<int:pk>/": row("POST", lambda c: f"/me/requests/{c.fresh_request()}/",
                                 redir=["patient"], gone=["other_patient"], deny=STAFF, login=ANON),
    "me/history/": row(url="/me/history/", found=["patient"], empty=["other_patient"], deny=STAFF, login=ANON),
    "me/studies/<int:pk>/share/": row(url=lambda c: f"/me/studies/{c.study_pk}/share/", ok=["patient"],
                                      gone=["other_patient"], deny=STAFF, login=ANON),
    "me/share/<int:pk>/": row(url=lambda c: f"/me/share/{c.link.pk}/", ok=["patient"], gone=["other_patient"],
                              deny=STAFF, login=ANON),
    "me/share/<int:pk>/revoke/": row("POST", lambda c: f"/me/share/{c.fresh_link()}/revoke/", redir=["patient"],
                                     gone=["other_patient"], deny=STAFF, login=ANON),
    # --- share links: only the holder who gave the PIN sees images ---
    "s/<str:token>/": row(url=lambda c: f"/s/{c.token}/", found=["share_link"],
                          empty=[a for a in ACTORS if a != "share_link"]),
    "s/<str:token>/img/<int:instance_pk>/": row(url=lambda c: f"/s/{c.token}/img/{c.instance_pk}/", ok=["share_link"],
                                                deny=[a for a in ACTORS if a != "share_link"]),
    # --- clinicians: access requests, break-glass ---
    "consent/request/": row(url="/consent/request/", ok=CLINICIANS, deny=["patient", "other_patient", "hospital_admin", "regulator"], login=ANON),
    "consent/requests/": row(url="/consent/requests/", ok=CLINICIANS, deny=["patient", "other_patient", "hospital_admin", "regulator"], login=ANON),
    "consent/break-glass/": row(url="/consent/break-glass/", ok=CLINICIANS, deny=["patient", "other_patient", "hospital_admin", "regulator"], login=ANON),
    "api/consent/Consent": row(url=lambda c: f"/api/consent/Consent?patient={c.enterprise_id}", found=["patient", "regulator"],
                               deny=[a for a in LOGGED_IN if a not in ("patient", "regulator")], unauth=ANON),
    # --- API description: no patient data ---
    "api/schema/": row(url="/api/schema/", ok=ACTORS),
    "api/docs/": row(url="/api/docs/", ok=ACTORS),
    # --- federated search (issue #6): a patient the caller may not see is answered like an unknown one ---
    "api/federation/search": row(url=lambda c: f"/api/federation/search?patient={c.enterprise_id}", found=SEES,
                                 gone=NOT_SEES, unauth=ANON),
}

# Pages of other apps, gated by role in their own tests (docs/decisions/0011-consent.md): the
# matrix checks that nobody without an account gets in.
for route in [
    "hospital/profile/", "hospital/archives/add/", "hospital/archives/<int:pk>/", "hospital/archives/<int:pk>/test/",
    "hospital/archives/<int:pk>/sync/", "hospital/archives/<int:pk>/live/", "hospital/archives/<int:pk>/status.json",
    "audit/", "audit/events/", "audit/patients/<uuid:enterprise_id>/", "audit/break-glass/", "audit/^export/?$",
    "mpi/review/", "mpi/review/<int:pk>/",
    "api/mpi/fhir/Patient", "api/mpi/fhir/Patient/$match", "api/mpi/fhir/Patient/<str:hospital_code>/<str:local_id>",
    "api/mpi/pix", "api/mpi/pdq", "api/mpi/hl7v2",
    # Prefetch of priors (POST, role-gated; tests/federation/test_proxy.py): shows no data to anyone.
    "api/federation/prefetch",
]:
    TABLE[route] = {"method": "GET", "url": None, "expect": {a: "refused" for a in ANON}, "note": ROLE_GATED}

# The Django admin: every pattern under admin/ is for staff accounts (is_staff), which none of
# the actors is; each is still requested, and must send every actor to the admin login.
ADMIN_PREFIX = "admin/"
# (One actor of each kind: the admin's ~100 generated patterns × 12 actors would be slow.)
ADMIN_ROW = row(url=None, login=["anonymous", "patient", "clinician_source", "hospital_admin", "regulator", "share_link"])
TABLE["admin/login/"] = row(url="/admin/login/", ok=ACTORS)
TABLE["admin/logout/"] = row(url="/admin/logout/", redir=ACTORS)


def walk(patterns, prefix="", namespace=""):
    for p in patterns:
        if isinstance(p, URLResolver):
            ns = f"{namespace}{p.namespace}:" if p.namespace else namespace
            yield from walk(p.url_patterns, prefix + str(p.pattern), ns)
        elif isinstance(p, URLPattern):
            yield prefix + str(p.pattern), p, namespace


SAMPLES = {"int": 999999, "str": "x", "path": "x", "slug": "x", "uuid": "00000000-0000-0000-0000-000000000000"}


def generic_url(route, pattern, namespace, ctx):
    """A concrete URL for a pattern whose row gives none: sample values for its parameters."""
    if isinstance(pattern.pattern, RoutePattern):
        kwargs = {k: SAMPLES.get(type(conv).__name__.removesuffix("Converter").lower(), "1")
                  for k, conv in pattern.pattern.converters.items()}
    else:
        kwargs = {k: getattr(ctx, k, "1") for k in pattern.pattern.regex.groupindex}
    if pattern.name:
        try:
            return reverse(namespace + pattern.name, kwargs=kwargs)
        except Exception:
            pass
    url = "/" + route
    for k, v in kwargs.items():
        url = url.replace(f"<{k}>", str(v))
        for conv in SAMPLES:
            url = url.replace(f"<{conv}:{k}>", str(v))
    return url.replace("^", "").replace("$", "").replace("/?", "/")


@dataclass
class Ctx:
    world: object
    link: object
    token: str

    def __post_init__(self):
        w = self.world
        self.study_pk = w.study.pk
        self.study_uid = w.study.study_instance_uid
        series = Series.objects.get(study=w.study)
        instance = Instance.objects.get(series=series)
        self.series_pk, self.series_uid = series.pk, series.series_instance_uid
        self.sop_uid, self.instance_pk = instance.sop_instance_uid, instance.pk
        self.enterprise_id = w.patient.enterprise_id
        self.frames = self.frame = "1"

    def fresh_consent(self):
        return services.consent_grant(actor=self.world.actors["patient"], patient=self.world.patient, scope=Scope.NETWORK,
                                      modalities="XA").pk

    def fresh_request(self):
        return services.access_request_create(actor=self.world.actors["clinician_no_consent"], patient=self.world.patient,
                                              reason="follow-up", study=self.world.study).pk

    def fresh_link(self):
        return services.share_link_create(actor=self.world.actors["patient"], study=self.world.study)[0].pk

    def marker(self, url):
        if "/s/" in url:
            return f"/img/{self.instance_pk}/"
        if url.startswith(("/dicomweb/", "/api/")):
            return self.study_uid if url.startswith("/dicomweb/") else str(self.enterprise_id)
        if url.startswith("/me/history/"):
            return "dr_consent"
        return f"/studies/{self.study_pk}/"


def check(outcome, response, marker):
    status = response.status_code
    body = b"" if getattr(response, "streaming", False) else response.content
    location = response.get("Location", "")
    if outcome == "found":
        return status == 200 and marker.encode() in body
    if outcome == "empty":
        return status == 200 and marker.encode() not in body
    if outcome == "login":
        return status == 302 and "login" in location
    if outcome == "redir":
        return status == 302
    if outcome == "refused":
        return status in (302, 401, 403) and (status != 302 or "login" in location)
    return status == {"ok": 200, "deny": 403, "gone": 404, "unauth": 401, "405": 405}[outcome]


def test_every_url_pattern_is_in_the_table_and_holds(world, settings):
    settings.CONSENT_DEFAULT = "opt-in"
    link, token = services.share_link_create(actor=world.actors["patient"], study=world.study, pin="4321")
    ctx = Ctx(world, link, token)
    clients = {}
    for name in ACTORS:
        c = Client()
        if name in world.actors:
            assert c.login(username=world.actors[name].username, password=PASSWORD)
        clients[name] = c
    r = clients["share_link"].post(f"/s/{token}/", {"pin": "4321"})
    assert r.status_code == 302

    missing, failures, seen = [], [], set()
    for route, pattern, namespace in walk(get_resolver().url_patterns):
        seen.add(route)
        entry = TABLE.get(route) or (ADMIN_ROW if route.startswith(ADMIN_PREFIX) else None)
        if entry is None:
            missing.append(route)
            continue
        assert set(entry["expect"]) <= set(ACTORS)
        if "note" not in entry and entry is not ADMIN_ROW:
            assert set(entry["expect"]) == set(ACTORS), f"{route}: every actor needs an outcome"
        for actor, outcome in entry["expect"].items():
            url = entry["url"]
            url = url(ctx) if callable(url) else url or generic_url(route, pattern, namespace, ctx)
            method = entry["method"].lower()
            response = getattr(clients[actor], method)(url)
            if not check(outcome, response, ctx.marker(url)):
                failures.append(f"{route} [{method.upper()} {url}] as {actor}: expected {outcome}, got "
                                f"{response.status_code} {response.get('Location', '')}")
    assert not missing, "URL patterns missing from the authorization table:\n" + "\n".join(missing)
    assert not failures, "\n".join(failures)
    stale = set(TABLE) - seen
    assert not stale, f"table rows for URLs that no longer exist: {stale}"
