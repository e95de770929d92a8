"""Browser tests: Playwright's sync API driving Debian's chromium (never a downloaded browser)
against pytest-django's live_server."""

import os
import shutil

import pytest

from tests.conftest import require

# Playwright's sync API keeps an event loop on this thread; Django's async-unsafe guard would
# then refuse the test's own ORM calls (seeding, checking), which are plain synchronous code.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
def browser():
    require("chromium", os.path.exists(CHROMIUM) and shutil.which(CHROMIUM) is not None,
            f"{CHROMIUM} (Debian package chromium) runs the browser tests")
    try:
        from playwright import sync_api
    except ImportError:
        sync_api = None
    require("Playwright", sync_api is not None, "pip install -r requirements.txt")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield page
    context.close()
