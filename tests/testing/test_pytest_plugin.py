"""The plugin as users meet it: installed, fixtures used from their own test projects."""

from __future__ import annotations

import textwrap

import pytest

SECRET = "whsec_plugin_tests_0123456789abcdef"

ASGI_APP = """
    from starlette.applications import Starlette
    from starlette.middleware import Middleware

    from gptimg_webhooks import Webhooks
    from gptimg_webhooks.asgi import WebhookMiddleware

    hooks = Webhooks(store="memory://", include_shared=False)  # secret from the environment
    saved = []

    @hooks.on("generation.succeeded")
    async def save(event):
        if event.data.generation_id.startswith("gen_boom"):
            raise RuntimeError("boom")
        saved.append(event.data.generation_id)

    app = Starlette(middleware=[Middleware(WebhookMiddleware, receiver=hooks)])
"""

USER_TESTS = """
    from myapp import saved

    def test_new_image_is_saved(gptimg, gptimg_events):
        result = gptimg.deliver(gptimg_events.succeeded(generation_id="gen_cat"))
        assert result.processed
        assert saved == ["gen_cat"]

    def test_retry_and_replay_are_duplicates(gptimg):
        first = gptimg.deliver()
        assert gptimg.retry(first).duplicate
        assert gptimg.replay(first).duplicate

    def test_bad_signature_is_refused(gptimg, gptimg_events):
        assert gptimg.deliver(gptimg_events.succeeded(), wrong_secret=True).unauthorized

    def test_failing_handler_is_retried_until_out_of_attempts(gptimg_simulator, gptimg_events):
        report = gptimg_simulator.deliver(gptimg_events.succeeded(generation_id="gen_boom"))
        assert report.outcome == "failed"
        assert [a.status for a in report.attempts] == [500, 500, 500, 500]

    def test_this_one_fails_on_purpose(gptimg, gptimg_events):
        assert gptimg.deliver(gptimg_events.succeeded(), wrong_secret=True).processed
"""


@pytest.fixture(autouse=True)
def _user_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the user projects without this repository's own Django settings."""
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)


def _expect(result: pytest.RunResult) -> None:
    """Four tests pass; the fifth fails, showing the answer in its assertion."""
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(["*DeliveryResult 401 invalid_signature*"])


def test_plugin_is_registered_by_the_entry_point(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--fixtures")
    result.stdout.fnmatch_lines(["plugins:*gptimg-webhooks*"])
    result.stdout.fnmatch_lines(["*fixtures defined from gptimg_webhooks.testing.pytest_plugin*"])
    result.stdout.fnmatch_lines(["gptimg -- *", "gptimg_simulator -- *"], consecutive=False)


@pytest.mark.slow
def test_asgi_app(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPTIMG_WEBHOOK_SECRET", SECRET)
    pytester.makepyfile(myapp=textwrap.dedent(ASGI_APP))
    pytester.makeconftest(
        """
        import pytest
        from myapp import app, saved

        @pytest.fixture
        def gptimg_app():
            saved.clear()
            return app
        """
    )
    pytester.makepyfile(test_hooks=textwrap.dedent(USER_TESTS))
    _expect(pytester.runpytest_subprocess())


@pytest.mark.slow
def test_flask_app(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPTIMG_WEBHOOK_SECRET", raising=False)  # read from app.config
    pytester.makepyfile(
        myapp=f"""
        from flask import Flask
        from gptimg_webhooks.flask import GptimgWebhooks

        webhooks = GptimgWebhooks()
        saved = []

        @webhooks.on("generation.succeeded")
        def save(event):
            if event.data.generation_id.startswith("gen_boom"):
                raise RuntimeError("boom")
            saved.append(event.data.generation_id)

        def create_app():
            app = Flask(__name__)
            app.config["GPTIMG_WEBHOOK_SECRET"] = "{SECRET}"
            app.config["GPTIMG_WEBHOOK_STORE"] = "memory://"
            webhooks.init_app(app)
            return app
        """
    )
    pytester.makeconftest(
        """
        import pytest
        from myapp import create_app, saved

        @pytest.fixture
        def gptimg_app():
            saved.clear()
            return create_app()
        """
    )
    pytester.makepyfile(test_hooks=textwrap.dedent(USER_TESTS))
    _expect(pytester.runpytest_subprocess())


@pytest.mark.slow
def test_django_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPTIMG_WEBHOOK_SECRET", raising=False)  # read from settings
    monkeypatch.delenv("GPTIMG_WEBHOOK_STORE", raising=False)
    pytester.makepyfile(
        settings=f"""
        SECRET_KEY = "test"
        ALLOWED_HOSTS = ["testserver"]
        ROOT_URLCONF = "urls"
        INSTALLED_APPS = ["gptimg_webhooks.django"]
        DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}}}}
        USE_TZ = True
        GPTIMG_WEBHOOKS = {{"SECRET": "{SECRET}"}}  # the ORM ledger by default
        """,
        urls="""
        from django.urls import path
        from gptimg_webhooks.django import webhook_view

        urlpatterns = [path("hooks/gptimg", webhook_view)]
        """,
        myapp="""
        from gptimg_webhooks import on

        saved = []

        @on("generation.succeeded")
        def save(event):
            if event.data.generation_id.startswith("gen_boom"):
                raise RuntimeError("boom")
            saved.append(event.data.generation_id)
        """,
    )
    pytester.makeini("[pytest]\nDJANGO_SETTINGS_MODULE = settings\n")
    pytester.makeconftest(
        """
        import pytest
        from myapp import saved

        @pytest.fixture(autouse=True)
        def _db(db):
            saved.clear()
        """
    )
    pytester.makepyfile(test_hooks=textwrap.dedent(USER_TESTS))
    _expect(pytester.runpytest_subprocess())


def test_without_an_app_the_failure_says_what_to_do(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_it(gptimg):\n    gptimg.deliver()\n")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*define a `gptimg_app` fixture*"])


README_APP = """
    from starlette.applications import Starlette
    from starlette.middleware import Middleware

    from gptimg_webhooks import Webhooks
    from gptimg_webhooks.asgi import WebhookMiddleware

    hooks = Webhooks()  # the README's defaults: a SQLite ledger file in the working directory
    runs = {}

    @hooks.on("generation.succeeded")
    async def succeeded(event):
        gid = event.data.generation_id
        runs[gid] = runs.get(gid, 0) + 1
        if gid == "gen_boom" and runs[gid] == 1:
            raise RuntimeError("boom")

    app = Starlette(middleware=[Middleware(WebhookMiddleware, receiver=hooks)])
"""

README_CONFTEST = """
    import pytest
    from myproject_app import app

    @pytest.fixture
    def gptimg_app():
        return app
"""

#: The README's "Testing your handlers" example, verbatim.
README_TESTS = """
    def test_new_image_is_saved(gptimg, gptimg_events):
        result = gptimg.deliver(gptimg_events.succeeded(generation_id="gen_cat", n=2))
        assert result.processed
        assert gptimg.retry(result).duplicate      # the provider's retry: same id
        assert gptimg.replay(result).duplicate     # same signed body, forged fresh id

    def test_forgery_is_refused(gptimg, gptimg_events):
        assert gptimg.deliver(gptimg_events.succeeded(), wrong_secret=True).unauthorized

    def test_failing_handler_is_retried(gptimg_simulator, gptimg_events):
        report = gptimg_simulator.deliver(gptimg_events.succeeded(generation_id="gen_boom"))
        assert [a.status for a in report.attempts] == [500, 200]
"""

#: The same body on every run: only the ledger tells one run from the next.
SAME_BODY_TESTS = """
    def test_same_body_every_run(gptimg, gptimg_events):
        sample = gptimg_events.succeeded(
            generation_id="gen_cat",
            created_at="2026-04-26T01:23:45.000Z",
            completed_at="2026-04-26T01:23:50.000Z",
        )
        result = gptimg.deliver(sample)
        assert result.processed, result
"""


def _readme_project(pytester: pytest.Pytester, tests: str, conftest_extra: str = "") -> None:
    pytester.makepyfile(myproject_app=textwrap.dedent(README_APP))
    pytester.makeconftest(textwrap.dedent(README_CONFTEST) + textwrap.dedent(conftest_extra))
    pytester.makepyfile(test_webhooks=textwrap.dedent(tests))


def _ledger_rows(pytester: pytest.Pytester) -> int:
    import sqlite3

    path = pytester.path / "gptimg_webhooks.sqlite3"
    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "gptimg_webhook_deliveries" not in tables:  # created on first write
            return 0
        (count,) = db.execute("SELECT count(*) FROM gptimg_webhook_deliveries").fetchone()
    return int(count)


@pytest.mark.slow
def test_readme_example_passes_run_after_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPTIMG_WEBHOOK_SECRET", SECRET)
    monkeypatch.delenv("GPTIMG_WEBHOOK_STORE", raising=False)
    _readme_project(pytester, README_TESTS + SAME_BODY_TESTS)
    for _ in range(2):
        pytester.runpytest_subprocess().assert_outcomes(passed=4)
    assert _ledger_rows(pytester) == 0  # each test had a fresh ledger of its own


@pytest.mark.slow
def test_opting_out_keeps_the_apps_own_ledger(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPTIMG_WEBHOOK_SECRET", SECRET)
    monkeypatch.delenv("GPTIMG_WEBHOOK_STORE", raising=False)
    opt_out = """
        @pytest.fixture
        def gptimg_isolate_ledger():
            return False
    """
    _readme_project(pytester, SAME_BODY_TESTS, opt_out)
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
    assert _ledger_rows(pytester) == 1
    second = pytester.runpytest_subprocess()
    second.assert_outcomes(failed=1)  # the app's SQLite ledger remembers the first run
    second.stdout.fnmatch_lines(["*DeliveryResult 200 duplicate*"])
