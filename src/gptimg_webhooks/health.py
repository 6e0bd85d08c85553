"""A health check for load balancers and probes: 200 or 503 with a short JSON reason.

::

    status, body = check(hooks)                          # any code
    app = Starlette(routes=[Mount("/healthz", health.asgi_app(hooks))])
    flask_app.add_url_rule("/healthz", view_func=health.flask_view(hooks))
    path("healthz", health.django_view(hooks))

Unhealthy (503) when the ledger cannot be read, when the endpoint's failure streak
reaches ``max_streak`` (default: the receiver's ``failure_threshold`` - 1, well before
the provider's limit of 8), or when the oldest pending record waited longer than
``max_pending_age`` seconds (runners down or behind).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from ._core.errors import StoreUnavailable
from ._core.ledger import Stats
from ._core.receiver import PROVIDER_FAILURE_LIMIT, Webhooks

__all__ = [
    "DEFAULT_MAX_PENDING_AGE",
    "HealthApp",
    "acheck",
    "asgi_app",
    "check",
    "django_view",
    "flask_view",
]

logger = logging.getLogger("gptimg_webhooks")

#: Five minutes: far beyond a healthy queue's wait, well inside the retention.
DEFAULT_MAX_PENDING_AGE = 300.0


def _log_unreadable(exc: Exception) -> None:
    level = logging.WARNING if isinstance(exc, StoreUnavailable) else logging.ERROR
    logger.log(level, "health check: cannot read the ledger (%s)", exc, exc_info=level > 30)


def _judge(
    hooks: Webhooks, stats: Stats | None, max_pending_age: float, max_streak: int | None
) -> tuple[int, dict[str, Any]]:
    if stats is None:
        return 503, {"ok": False, "reason": "the ledger is unavailable"}
    limit = hooks.failure_threshold - 1 if max_streak is None else max_streak
    streak = stats.streaks.get(hooks.guard_counter)
    reasons = []
    if streak is not None and streak >= limit:
        reasons.append(
            f"{streak} failed answers in a row (the provider disables the endpoint at "
            f"{PROVIDER_FAILURE_LIMIT})"
        )
    age = stats.oldest_pending_age
    if age is not None and age > max_pending_age:
        reasons.append(f"the oldest pending record waited {age:.0f} s")
    body: dict[str, Any] = {
        "ok": not reasons,
        "reason": "; ".join(reasons) or "ok",
        "pending": stats.pending,
        "oldest_pending_age": None if age is None else round(age, 3),
        "dead": stats.dead,
        "failure_streak": streak,
    }
    return (503 if reasons else 200), body


def check(
    hooks: Webhooks,
    *,
    max_pending_age: float = DEFAULT_MAX_PENDING_AGE,
    max_streak: int | None = None,
) -> tuple[int, dict[str, Any]]:
    """Judge the receiver's health; return the HTTP status and a small JSON-able body."""
    try:
        stats: Stats | None = hooks.store.stats([hooks.guard_counter])
    except Exception as exc:  # a probe answers 503, never a traceback
        _log_unreadable(exc)
        stats = None
    return _judge(hooks, stats, max_pending_age, max_streak)


async def acheck(
    hooks: Webhooks,
    *,
    max_pending_age: float = DEFAULT_MAX_PENDING_AGE,
    max_streak: int | None = None,
) -> tuple[int, dict[str, Any]]:
    """Async twin of :func:`check`."""
    try:
        stats: Stats | None = await hooks.store.astats([hooks.guard_counter])
    except Exception as exc:
        _log_unreadable(exc)
        stats = None
    return _judge(hooks, stats, max_pending_age, max_streak)


HooksRef = Webhooks | Callable[[], Webhooks]


def _resolve(hooks: HooksRef) -> Webhooks:
    return hooks if isinstance(hooks, Webhooks) else hooks()


class HealthApp:
    """An ASGI app answering every HTTP request with the health check."""

    def __init__(self, hooks: HooksRef, **options: Any) -> None:
        self.hooks, self.options = hooks, options

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        status, body = await acheck(_resolve(self.hooks), **self.options)
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def asgi_app(hooks: HooksRef, **options: Any) -> HealthApp:
    """Return an ASGI app for the health check (``Route("/healthz", asgi_app(hooks))``).

    ``hooks`` may be a function returning the receiver (built on first request).
    """
    return HealthApp(hooks, **options)


def flask_view(hooks: HooksRef, **options: Any) -> Callable[[], Any]:
    """Return a Flask view function for the health check."""

    def healthz() -> Any:
        from flask import jsonify

        status, body = check(_resolve(hooks), **options)
        return jsonify(body), status

    return healthz


def django_view(hooks: HooksRef, **options: Any) -> Callable[[Any], Any]:
    """Return a Django view for the health check (``hooks`` may be a function: lazy)."""

    def healthz(request: Any) -> Any:
        from django.http import JsonResponse

        status, body = check(_resolve(hooks), **options)
        return JsonResponse(body, status=status)

    return healthz
