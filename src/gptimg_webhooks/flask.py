"""Flask adapter: an extension with ``init_app``, a Blueprint factory and a view factory.

::

    webhooks = GptimgWebhooks()  # settings from app.config, else the environment

    @webhooks.on("generation.succeeded")
    def save(event: GenerationSucceeded) -> None: ...

    webhooks.init_app(app)  # POST /hooks/gptimg

Config keys: ``GPTIMG_WEBHOOK_SECRET`` (str or list), ``GPTIMG_WEBHOOK_STORE`` (URL),
``GPTIMG_WEBHOOK_PATH``, ``GPTIMG_WEBHOOK_MAX_BODY_SIZE`` and ``GPTIMG_WEBHOOK_OPTIONS``
(other :class:`~gptimg_webhooks.Webhooks` keyword arguments).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast
from weakref import WeakKeyDictionary

from flask import Blueprint, Flask, current_app, has_app_context, request

from ._core.body import BodyReader, refuse
from ._core.errors import RequestRejected
from ._core.handlers import Registry
from ._core.protocol import environ_headers
from ._core.receiver import DEFAULT_MAX_BODY_SIZE, Webhooks

__all__ = ["EXTENSION", "GptimgWebhooks", "webhook_blueprint", "webhook_view"]

#: The key in ``app.extensions`` and the endpoint name.
EXTENSION = "gptimg_webhooks"
# Every method reaches the core, so a GET gets its JSON 405 rather than Flask's HTML one.
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]


def _read_body(environ: dict[str, Any], limit: int) -> bytes:
    """Read the raw body from ``wsgi.input``, never past its length nor past the cap + 1 byte.

    A chunked body has no length: it is read until the stream ends. Servers that de-chunk
    and set ``wsgi.input_terminated`` (gunicorn, waitress, werkzeug's) end the stream with
    the body; on any other server this is best effort.
    """
    reader = BodyReader(limit)
    reader.check_length(
        environ.get("CONTENT_LENGTH"),
        environ.get("HTTP_TRANSFER_ENCODING"),
        stream_ends=bool(environ.get("wsgi.input_terminated")),
    )
    return reader.read_from(environ["wsgi.input"].read)


def webhook_view(receiver: Webhooks | None = None) -> Callable[[], Any]:
    """Return a view that answers every request as a delivery (``Webhooks()`` by default).

    Route it by hand with ``app.add_url_rule(rule, view_func=view)``; it carries its own
    methods. Under Flask-WTF's CSRFProtect, also ``csrf.exempt(view)``.
    """
    hooks = receiver if receiver is not None else Webhooks()

    def gptimg_webhook() -> Any:
        environ = request.environ
        method = environ["REQUEST_METHOD"]
        try:
            body = _read_body(environ, hooks.max_body_size) if method == "POST" else b""
        except RequestRejected as exc:
            answer = refuse(exc, environ.get("HTTP_X_GPTIMG_DELIVERY", ""))
        else:
            headers = environ_headers(environ)
            answer = hooks.handle(method, headers, body, path=request.path)
        return current_app.response_class(answer.body, answer.status, list(answer.headers))

    view = cast(Any, gptimg_webhook)
    view.methods, view.provide_automatic_options = _METHODS, False
    return gptimg_webhook


def _rules(hooks: Webhooks) -> list[str]:
    """The URL rules a receiver answers: its path, and its accounts' (``<path>/<name>``)."""
    if hooks.accounts is None:
        return [hooks.path]
    return [hooks.path, f"{hooks.path.rstrip('/')}/<account>", *hooks.accounts.paths]


def _exempt_from_csrf(scope: Flask | Blueprint, view: Callable[[], Any]) -> None:
    """Let Flask-WTF's CSRFProtect pass the webhook, whichever extension came first."""

    # URL value preprocessors run before every before_request hook, CSRFProtect's too.
    def exempt(endpoint: str | None, values: dict[str, Any] | None) -> None:
        csrf = current_app.extensions.get("csrf")
        if csrf is not None and current_app.view_functions.get(endpoint or "") is view:
            csrf.exempt(view)

    scope.url_value_preprocessor(exempt)


def webhook_blueprint(
    receiver: Webhooks | None = None, *, name: str = EXTENSION, url_prefix: str | None = None
) -> Blueprint:
    """Return a Blueprint serving ``receiver.path`` (under ``url_prefix``), CSRF-exempt."""
    hooks = receiver if receiver is not None else Webhooks()
    blueprint = Blueprint(name, __name__, url_prefix=url_prefix)
    view = webhook_view(hooks)
    for rule in _rules(hooks):
        blueprint.add_url_rule(rule, view_func=view)
    _exempt_from_csrf(blueprint, view)
    return blueprint


class GptimgWebhooks:
    """The Flask extension: ``GptimgWebhooks(app)`` or ``init_app(app)`` in a factory."""

    def __init__(self, app: Flask | None = None, receiver: Webhooks | None = None) -> None:
        self._receiver = receiver
        self._receivers: WeakKeyDictionary[Flask, Webhooks] = WeakKeyDictionary()
        #: Handlers registered here run for every app this extension is set up on.
        self.registry = receiver.registry if receiver is not None else Registry()
        self.on = self.registry.on
        self.on_error = self.registry.on_error
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Build the app's receiver from ``app.config`` and mount its endpoint."""
        if EXTENSION in app.extensions:
            raise RuntimeError(
                "GptimgWebhooks is already registered on this app; use that instance"
            )
        config = app.config
        config.setdefault("GPTIMG_WEBHOOK_PATH", "/hooks/gptimg")
        config.setdefault("GPTIMG_WEBHOOK_MAX_BODY_SIZE", DEFAULT_MAX_BODY_SIZE)
        receiver = self._receiver or Webhooks(
            config.get("GPTIMG_WEBHOOK_SECRET"),
            store=config.get("GPTIMG_WEBHOOK_STORE"),
            path=config["GPTIMG_WEBHOOK_PATH"],
            max_body_size=int(config["GPTIMG_WEBHOOK_MAX_BODY_SIZE"]),
            registry=self.registry,
            **(config.get("GPTIMG_WEBHOOK_OPTIONS") or {}),
        )
        view = webhook_view(receiver)
        for i, rule in enumerate(_rules(receiver)):
            app.add_url_rule(
                rule, endpoint=EXTENSION if not i else f"{EXTENSION}_{i}", view_func=view
            )
        _exempt_from_csrf(app, view)
        self._receivers[app] = receiver
        app.extensions[EXTENSION] = self

    @property
    def receiver(self) -> Webhooks:
        """Return the receiver given, else the current app's (or the only app's)."""
        if self._receiver is not None:
            return self._receiver
        if has_app_context():
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        elif len(self._receivers) == 1:
            app = next(iter(self._receivers))
        else:
            raise RuntimeError("GptimgWebhooks.receiver: no app context, and not exactly one app")
        if app not in self._receivers:
            raise RuntimeError("GptimgWebhooks.init_app(app) was not called for this app")
        return self._receivers[app]
