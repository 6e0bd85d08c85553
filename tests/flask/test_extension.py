"""The Flask adapter through Flask's test client and hand-built WSGI environs."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask, request
from flask_wtf.csrf import CSRFProtect  # type: ignore[import-untyped]
from werkzeug.test import EnvironBuilder

import gptimg_webhooks
from gptimg_webhooks import ConfigurationError, Delivery, Event, Webhooks
from gptimg_webhooks.flask import GptimgWebhooks, webhook_blueprint, webhook_view
from gptimg_webhooks.stores.memory import MemoryStore
from tests.flask.conftest import SECRET, Calls, delivery, signed
from tests.support.contract import payload

MakeApp = Callable[..., tuple[Flask, GptimgWebhooks]]


def error_of(response: Any) -> str:
    assert response.mimetype == "application/json", response.data[:200]
    code: str = response.get_json()["error"]
    return code


# Extension convention -------------------------------------------------------------


def test_init_app_registers_extension_and_mounts_default_path(
    make_app: MakeApp, calls: Calls
) -> None:
    app, ext = make_app()
    assert app.extensions["gptimg_webhooks"] is ext
    rules = {r.rule: r.endpoint for r in app.url_map.iter_rules()}
    assert rules["/hooks/gptimg"] == "gptimg_webhooks"
    assert app.config["GPTIMG_WEBHOOK_PATH"] == "/hooks/gptimg"
    assert app.config["GPTIMG_WEBHOOK_MAX_BODY_SIZE"] == 1 << 20
    body, headers = delivery("gen_first")
    response = app.test_client().post("/hooks/gptimg", data=body, headers=headers)
    assert response.status_code == 200, response.data
    assert calls.ids() == ["gen_first"]


def test_constructor_with_app_initialises_it() -> None:
    app = Flask(__name__)
    app.config.update(GPTIMG_WEBHOOK_SECRET=SECRET, GPTIMG_WEBHOOK_STORE="memory://")
    ext = GptimgWebhooks(app)
    assert app.extensions["gptimg_webhooks"] is ext
    assert isinstance(ext.receiver.store, MemoryStore)


def test_config_keys_set_secrets_store_path_and_size_cap(make_app: MakeApp, calls: Calls) -> None:
    old, new = "whsec_old_rotating_out", "whsec_new_rotating_in"
    app, ext = make_app(
        GPTIMG_WEBHOOK_SECRET=[old, new],
        GPTIMG_WEBHOOK_PATH="/incoming/gptimg",
        GPTIMG_WEBHOOK_MAX_BODY_SIZE=2000,
        GPTIMG_WEBHOOK_OPTIONS={"failure_threshold": 3},
    )
    client = app.test_client()
    for secret in (old, new):
        body = payload(f"gen_rot_{secret[6:9]}")
        response = client.post("/incoming/gptimg", data=body, headers=signed(body, secret=secret))
        assert response.status_code == 200, response.data
    assert [d.secret.index for _, d in calls] == [0, 1]
    assert client.post("/hooks/gptimg", data=body, headers=signed(body)).status_code == 404
    big = payload("gen_big", pad="x" * 2000)
    response = client.post("/incoming/gptimg", data=big, headers=signed(big, secret=new))
    assert (response.status_code, error_of(response)) == (413, "payload_too_large")
    assert ext.receiver.failure_threshold == 3
    assert isinstance(ext.receiver.store, MemoryStore)


def test_settings_fall_back_to_the_environment(
    monkeypatch: pytest.MonkeyPatch, calls: Calls
) -> None:
    monkeypatch.setenv("GPTIMG_WEBHOOK_SECRET", "whsec_from_env_a,whsec_from_env_b")
    monkeypatch.setenv("GPTIMG_WEBHOOK_STORE", "memory://")
    app = Flask(__name__)
    ext = GptimgWebhooks(app)
    ext.on("generation.succeeded")(lambda event, d: calls.append((event, d)))
    body = payload("gen_env")
    headers = signed(body, secret="whsec_from_env_b")
    assert app.test_client().post("/hooks/gptimg", data=body, headers=headers).status_code == 200
    assert calls.ids() == ["gen_env"]
    assert isinstance(ext.receiver.store, MemoryStore)


@pytest.mark.parametrize("secret", ["", "   ", ["whsec_ok", " "]])
def test_blank_secret_fails_at_init_app_naming_it(make_app: MakeApp, secret: object) -> None:
    with pytest.raises(ConfigurationError, match="secret"):
        make_app(GPTIMG_WEBHOOK_SECRET=secret)


def test_init_app_twice_on_one_app_is_refused(make_app: MakeApp) -> None:
    app, _ = make_app()
    with pytest.raises(RuntimeError, match="already registered"):
        GptimgWebhooks().init_app(app)


def test_one_extension_serves_apps_with_their_own_config(calls: Calls) -> None:
    ext = GptimgWebhooks()
    ext.on("generation.succeeded")(lambda event, d: calls.append((event, d)))
    apps = []
    for secret in ("whsec_app_one", "whsec_app_two"):
        app = Flask(__name__)
        app.config.update(GPTIMG_WEBHOOK_SECRET=secret, GPTIMG_WEBHOOK_STORE="memory://")
        ext.init_app(app)
        apps.append((app, secret))
    for app, secret in apps:
        body = payload(f"gen_{secret[-3:]}")
        client = app.test_client()
        assert client.post("/hooks/gptimg", data=body, headers=signed(body)).status_code == 401
        ok = client.post("/hooks/gptimg", data=body, headers=signed(body, secret=secret))
        assert ok.status_code == 200
        with app.app_context():
            assert ext.receiver.verifier.secrets[0].id == Webhooks(secret).verifier.secrets[0].id
    assert calls.ids() == ["gen_one", "gen_two"]
    with pytest.raises(RuntimeError, match="exactly one app"):
        _ = ext.receiver


def test_given_receiver_is_mounted_and_extension_on_registers_on_it(calls: Calls) -> None:
    hooks = Webhooks(SECRET, store="memory://", path="/given", include_shared=False)
    app = Flask(__name__)
    ext = GptimgWebhooks(app, receiver=hooks)
    ext.on("generation.succeeded")(lambda event, d: calls.append((event, d)))
    assert ext.receiver is hooks
    assert ext.registry is hooks.registry
    body, headers = delivery("gen_given")
    assert app.test_client().post("/given", data=body, headers=headers).status_code == 200
    assert calls.ids() == ["gen_given"]


def test_module_level_on_handlers_run_through_the_extension(make_app: MakeApp) -> None:
    seen: list[str] = []
    # A name only this test sends, so the shared registration touches no other test.
    gptimg_webhooks.on("flasktest.module_level", allow_unknown=True)(
        lambda event: seen.append(event.event)
    )
    app, _ = make_app()
    body = json.dumps({"event": "flasktest.module_level", "data": {}}).encode()
    headers = signed(body, event="flasktest.module_level")
    assert app.test_client().post("/hooks/gptimg", data=body, headers=headers).status_code == 200
    assert seen == ["flasktest.module_level"]


# Routing by hand --------------------------------------------------------------------


def test_blueprint_serves_the_receiver_path_under_its_prefix(calls: Calls) -> None:
    hooks = Webhooks(SECRET, store="memory://", include_shared=False)
    hooks.on("generation.succeeded")(lambda event, d: calls.append((event, d)))
    app = Flask(__name__)
    app.register_blueprint(webhook_blueprint(hooks, url_prefix="/api"))
    client = app.test_client()
    body, headers = delivery("gen_bp")
    assert client.post("/api/hooks/gptimg", data=body, headers=headers).status_code == 200
    assert client.post("/hooks/gptimg", data=body, headers=headers).status_code == 404
    response = client.get("/api/hooks/gptimg")
    assert (response.status_code, error_of(response)) == (405, "method_not_allowed")
    assert calls.ids() == ["gen_bp"]


def test_view_factory_carries_its_methods_when_routed_by_hand(calls: Calls) -> None:
    hooks = Webhooks(SECRET, store="memory://", include_shared=False)
    hooks.on("generation.succeeded")(lambda event, d: calls.append((event, d)))
    app = Flask(__name__)
    app.add_url_rule("/incoming", view_func=webhook_view(hooks))
    client = app.test_client()
    body, headers = delivery("gen_view")
    assert client.post("/incoming", data=body, headers=headers).status_code == 200
    for method in ("GET", "PUT", "PATCH", "DELETE", "OPTIONS"):
        response = client.open("/incoming", method=method)
        assert (response.status_code, error_of(response)) == (405, "method_not_allowed"), method
        assert response.headers["Allow"] == "POST"
    assert calls.ids() == ["gen_view"]


def test_get_on_the_endpoint_gets_the_core_json_405(make_app: MakeApp) -> None:
    app, _ = make_app()
    client = app.test_client()
    response = client.get("/hooks/gptimg")
    assert (response.status_code, error_of(response)) == (405, "method_not_allowed")
    head = client.head("/hooks/gptimg")
    assert (head.status_code, head.data) == (405, b"")


# CSRF -------------------------------------------------------------------------------


@pytest.mark.parametrize("csrf_first", [True, False], ids=["csrf-first", "csrf-after"])
def test_csrf_protect_does_not_block_the_webhook(
    make_app: MakeApp, calls: Calls, csrf_first: bool
) -> None:
    app = Flask(__name__)
    app.config.update(
        TESTING=True, SECRET_KEY="k", GPTIMG_WEBHOOK_SECRET=SECRET, GPTIMG_WEBHOOK_STORE="memory://"
    )
    csrf = CSRFProtect()
    ext = GptimgWebhooks()
    ext.on("generation.succeeded")(lambda event, d: calls.append((event, d)))
    first, second = (csrf, ext) if csrf_first else (ext, csrf)
    first.init_app(app)
    second.init_app(app)
    app.add_url_rule("/form", "form", lambda: "ok", methods=["POST"])
    client = app.test_client()
    # CSRF is live: a plain POST elsewhere is refused...
    assert client.post("/form", data={"a": "1"}).status_code == 400
    # ...while the webhook, which carries no CSRF token, goes through.
    body, headers = delivery("gen_csrf")
    response = client.post("/hooks/gptimg", data=body, headers=headers)
    assert response.status_code == 200, response.data
    assert calls.ids() == ["gen_csrf"]
    assert client.post("/form", data={"a": "1"}).status_code == 400


def test_csrf_protect_does_not_block_the_blueprint(calls: Calls) -> None:
    hooks = Webhooks(SECRET, store="memory://", include_shared=False)
    hooks.on("generation.succeeded")(lambda event, d: calls.append((event, d)))
    app = Flask(__name__)
    app.config.update(TESTING=True, SECRET_KEY="k")
    CSRFProtect(app)
    app.register_blueprint(webhook_blueprint(hooks))
    body, headers = delivery("gen_csrf_bp")
    assert app.test_client().post("/hooks/gptimg", data=body, headers=headers).status_code == 200
    assert calls.ids() == ["gen_csrf_bp"]


# The raw body -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain", ""],
)
def test_body_is_verified_raw_whatever_the_content_type(
    make_app: MakeApp, calls: Calls, content_type: str
) -> None:
    app, _ = make_app()
    body, headers = delivery("gen_ctype")
    headers["Content-Type"] = content_type
    response = app.test_client().post("/hooks/gptimg", data=body, headers=headers)
    assert response.status_code == 200, response.data
    assert calls.ids() == ["gen_ctype"]


def test_form_shaped_body_is_verified_then_rejected_as_not_json(make_app: MakeApp) -> None:
    app, _ = make_app()
    body = b"event=generation.succeeded&generationId=gen_form"
    headers = {**signed(body), "Content-Type": "application/x-www-form-urlencoded"}
    response = app.test_client().post("/hooks/gptimg", data=body, headers=headers)
    # 400, not 401: the signature matched the raw bytes; only then did parsing refuse them.
    assert (response.status_code, error_of(response)) == (400, "invalid_payload")
    bad = {**headers, "X-Gptimg-Signature": "0" * 64}
    response = app.test_client().post("/hooks/gptimg", data=body, headers=bad)
    assert response.status_code == 401


def test_other_routes_still_parse_their_forms(make_app: MakeApp) -> None:
    app, _ = make_app()
    app.add_url_rule("/echo", "echo", lambda: request.form["name"], methods=["POST"])
    assert app.test_client().post("/echo", data={"name": "flask"}).data == b"flask"


class Endless(io.RawIOBase):
    """An endless body that counts what was read from it."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = len(buffer)
        buffer[:n] = b"x" * n
        self.read_bytes += n
        return n


class Unreadable(io.RawIOBase):
    """A body whose reading fails, as when the client goes away."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.touched = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.touched = True
        raise self.error or AssertionError("the body should not have been read")


def call(app: Flask, environ: dict[str, Any]) -> tuple[int, bytes]:
    """Call the WSGI app directly; return the status code and body."""
    status: list[str] = []
    chunks = app(environ, lambda s, h, e=None: status.append(s))  # type: ignore[arg-type]
    return int(status[0].split()[0]), b"".join(chunks)


def environ_for(
    stream: io.RawIOBase | io.BytesIO, *, content_length: int | None, headers: dict[str, str]
) -> dict[str, Any]:
    environ: dict[str, Any] = EnvironBuilder(
        "/hooks/gptimg", method="POST", headers=list(headers.items())
    ).get_environ()
    environ["wsgi.input"] = stream
    environ.pop("CONTENT_LENGTH", None)
    if content_length is None:
        # What gunicorn and werkzeug's server say when they end a chunked body themselves.
        environ["wsgi.input_terminated"] = True
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    else:
        environ["CONTENT_LENGTH"] = str(content_length)
    return environ


def test_content_length_over_the_cap_is_refused_without_reading(make_app: MakeApp) -> None:
    app, _ = make_app(GPTIMG_WEBHOOK_MAX_BODY_SIZE=1000)
    stream = Unreadable()
    environ = environ_for(stream, content_length=1001, headers=signed(b"x" * 1001))
    status, body = call(app, environ)
    assert status == 413
    assert json.loads(body)["error"] == "payload_too_large"
    assert not stream.touched


def test_chunked_body_over_the_cap_stops_reading_at_the_cap(make_app: MakeApp) -> None:
    app, _ = make_app(GPTIMG_WEBHOOK_MAX_BODY_SIZE=100_000)
    stream = Endless()
    status, body = call(app, environ_for(stream, content_length=None, headers=signed(b"")))
    assert status == 413
    assert json.loads(body)["error"] == "payload_too_large"
    assert stream.read_bytes == 100_001  # one byte past the cap tells it is too large


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_of_exactly_the_cap_passes_and_one_byte_more_does_not(
    make_app: MakeApp, calls: Calls, chunked: bool
) -> None:
    body, headers = delivery("gen_exact")
    app, _ = make_app(GPTIMG_WEBHOOK_MAX_BODY_SIZE=len(body))
    length = None if chunked else len(body)
    assert (
        call(app, environ_for(io.BytesIO(body), content_length=length, headers=headers))[0] == 200
    )
    assert calls.ids() == ["gen_exact"]
    longer = body + b" "
    environ = environ_for(
        io.BytesIO(longer), content_length=None if chunked else len(longer), headers=signed(longer)
    )
    assert call(app, environ)[0] == 413


def test_chunked_body_within_the_cap_is_read_whole(make_app: MakeApp, calls: Calls) -> None:
    app, _ = make_app()
    body, headers = delivery("gen_chunked")
    environ = environ_for(io.BytesIO(body), content_length=None, headers=headers)
    assert call(app, environ)[0] == 200
    assert calls.ids() == ["gen_chunked"]


def test_chunked_body_is_read_to_its_end_where_the_server_does_not_mark_it_terminated(
    make_app: MakeApp, calls: Calls
) -> None:
    app, _ = make_app(GPTIMG_WEBHOOK_MAX_BODY_SIZE=100_000)
    body, headers = delivery("gen_unterminated")
    environ = environ_for(io.BytesIO(body), content_length=None, headers=headers)
    del environ["wsgi.input_terminated"]  # a server that de-chunks but does not say so
    assert call(app, environ)[0] == 200
    assert calls.ids() == ["gen_unterminated"]
    stream = Endless()
    environ = environ_for(stream, content_length=None, headers=signed(b""))
    del environ["wsgi.input_terminated"]
    assert call(app, environ)[0] == 413
    assert stream.read_bytes == 100_001


def test_no_length_and_not_chunked_is_an_empty_body_never_read(make_app: MakeApp) -> None:
    app, _ = make_app()
    stream = Unreadable()  # a socket with nothing more to come: reading would block
    environ = environ_for(stream, content_length=None, headers=signed(b""))
    del environ["wsgi.input_terminated"], environ["HTTP_TRANSFER_ENCODING"]
    status, body = call(app, environ)
    # The empty body is the one signed: verified, then refused as not JSON.
    assert (status, json.loads(body)["error"]) == (400, "invalid_payload")
    assert not stream.touched


@pytest.mark.parametrize("error", [OSError("connection reset"), ConnectionResetError()])
def test_client_gone_mid_body_is_a_json_400(make_app: MakeApp, error: Exception) -> None:
    app, _ = make_app()
    status, body = call(app, environ_for(Unreadable(error), content_length=500, headers={}))
    assert status == 400
    assert json.loads(body)["error"] == "invalid_payload"


def test_repeated_signature_header_folded_by_wsgi_is_401(make_app: MakeApp) -> None:
    app, _ = make_app()
    body, headers = delivery("gen_folded")
    pairs = [*headers.items(), ("X-Gptimg-Signature", headers["X-Gptimg-Signature"])]
    response = app.test_client().post("/hooks/gptimg", data=body, headers=pairs)
    assert (response.status_code, error_of(response)) == (401, "invalid_signature")


# Nothing escapes to Flask -------------------------------------------------------------


def test_handler_error_is_the_core_json_500_not_a_flask_error(
    make_app: MakeApp, calls: Calls
) -> None:
    app, _ = make_app()  # TESTING=True: an escaping exception would raise here
    client = app.test_client()
    body, headers = delivery("gen_boom_1")
    response = client.post("/hooks/gptimg", data=body, headers=headers)
    assert (response.status_code, error_of(response)) == (500, "handler_failed")
    assert calls == []


class BrokenStore(MemoryStore):
    def claim(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")


def test_store_failure_is_a_json_503(calls: Calls) -> None:
    app = Flask(__name__)
    app.config["TESTING"] = True
    GptimgWebhooks(app, receiver=Webhooks(SECRET, store=BrokenStore(), include_shared=False))
    body, headers = delivery("gen_store")
    response = app.test_client().post("/hooks/gptimg", data=body, headers=headers)
    assert (response.status_code, error_of(response)) == (503, "store_unavailable")
    assert "Retry-After" in response.headers


def test_handlers_get_delivery_metadata(make_app: MakeApp, calls: Calls) -> None:
    app, _ = make_app()
    body, headers = delivery("gen_meta")
    app.test_client().post("/hooks/gptimg", data=body, headers=headers)
    ((event, meta),) = calls
    assert isinstance(event, Event)
    assert isinstance(meta, Delivery)
    assert (meta.id, meta.attempt, meta.secret.index) == (headers["X-Gptimg-Delivery"], 1, 0)


def test_a_body_shorter_than_its_content_length_is_never_processed(
    make_app: MakeApp, calls: Calls
) -> None:
    # Found by the hostile table (content_length_longer_than_body): gunicorn ends a body
    # cut short by a disconnect without an error, so the whole signed body arrived and
    # verified although the request declared more.
    app, _ = make_app()
    body, headers = delivery("gen_cut_short")
    environ = environ_for(io.BytesIO(body), content_length=len(body) + 10, headers=headers)
    environ["wsgi.input_terminated"] = True  # gunicorn's stream: no werkzeug length limit
    status, answer = call(app, environ)
    assert status == 400
    assert json.loads(answer)["error"] == "invalid_payload"
    assert calls.ids() == []
