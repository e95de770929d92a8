"""The patient portal on a phone (390×844) in a real browser (issue #5): code login, consent to
hospital B, the clinician at B sees the study until the patient withdraws; a share link with a
PIN opens the images in a fresh browser until it is withdrawn."""

import os

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop on this thread

import pytest  # noqa: E402

from consent import sms  # noqa: E402
from tests.consent.conftest import PHONE_WANG, _encryption_key, world  # noqa: E402,F401
from tests.conftest import PASSWORD, require  # noqa: E402

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
SENT: list[str] = []  # codes the console backend would have printed


@pytest.fixture
def chromium():
    require("chromium", os.path.exists(CHROMIUM))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def capture_sms(monkeypatch):
    SENT.clear()
    monkeypatch.setattr(sms.ConsoleBackend, "send", lambda self, phone, message: SENT.append(message[-6:]))
    return SENT


def image_loaded(page, selector) -> bool:
    page.wait_for_selector(selector)
    page.wait_for_function(f"() => {{ const i = document.querySelector({selector!r}); return i && i.complete; }}")
    return page.eval_on_selector(selector, "i => i.naturalWidth > 0")


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_patient_consents_revokes_and_shares_on_a_phone(live_server, chromium, world, capture_sms):
    url = live_server.url
    phone = chromium.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    me = phone.new_page()
    me.set_default_timeout(20_000)

    # given: the patient logs in with the code from the SMS
    me.goto(f"{url}/me/login/")
    me.fill("input[name=phone]", PHONE_WANG)
    me.click("#send-code")
    me.wait_for_url(f"{url}/me/login/code/")
    assert len(capture_sms) == 1
    me.fill("input[name=code]", capture_sms[0])
    me.click("#login")
    me.wait_for_url(f"{url}/me/")
    assert me.locator(".study").count() == 2 and no_horizontal_scroll(me)

    # when: they let hospital B see their images
    me.click("nav >> text=Who may see")
    me.select_option("select[name=scope]", "hospital")
    me.select_option("select[name=hospital]", str(world.hospital_b.pk))
    me.click("#grant-submit")
    me.wait_for_url(f"{url}/me/consents/?saved=1")
    consent_card = me.locator(".consent").filter(has=me.get_by_role("heading", name=world.hospital_b.name, exact=True))
    assert consent_card.count() == 1 and "active" in consent_card.inner_text() and no_horizontal_scroll(me)

    # then: a clinician at B finds and opens the study
    desk = chromium.new_context(viewport={"width": 1280, "height": 900})
    dr = desk.new_page()
    dr.set_default_timeout(20_000)
    dr.goto(f"{url}/accounts/login/")
    dr.fill("input[name=username]", world.actors["clinician_no_consent"].username)
    dr.fill("input[name=password]", PASSWORD)
    dr.click("button[type=submit]")
    dr.goto(f"{url}/search/?name=wang")
    dr.click(f"a[href='/studies/{world.study.pk}/']")
    dr.wait_for_url(f"{url}/studies/{world.study.pk}/")
    assert image_loaded(dr, ".thumbs img")

    # when: the patient withdraws; then: the clinician's next request is refused
    consent_card.locator("button.revoke").click()
    me.wait_for_url(f"{url}/me/consents/?revoked=1")
    response = dr.goto(f"{url}/studies/{world.study.pk}/")
    assert response.status == 403 and "Access denied" in dr.content()

    # when: the patient shares the study by link with a PIN
    me.goto(f"{url}/me/")
    me.locator(".study", has_text=world.hospital_a.name).locator("text=Share with a doctor").click()
    me.fill("input[name=pin]", "2468")
    me.click("#make-link")
    me.wait_for_selector(".qr svg")
    share_url = me.inner_text("#share-url").strip()
    assert no_horizontal_scroll(me)

    # then: a fresh browser with the PIN sees the images
    outsider = chromium.new_context(viewport={"width": 390, "height": 844})
    doc = outsider.new_page()
    doc.set_default_timeout(20_000)
    doc.goto(share_url)
    doc.fill("input[name=pin]", "2468")
    doc.click("#open")
    assert image_loaded(doc, "img.shared")

    # when: the patient withdraws the link; then: it no longer opens
    me.click("#revoke-link")
    me.wait_for_selector("#link-state:has-text('revoked')")
    response = doc.goto(share_url)
    assert response.status == 403 and doc.locator("#refused").count() == 1 and doc.locator("img.shared").count() == 0
    fresh = chromium.new_context().new_page()
    assert fresh.goto(share_url).status == 403
    for ctx in (phone, desk, outsider):
        ctx.close()
