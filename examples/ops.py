"""What the examples share for operations: the task engine chosen by environment, metrics
and the health check.

``GPTIMG_EXAMPLE_ENGINE`` picks how deliveries are processed (see examples/README.md):
unset (inline), ``worker`` (deferred, the built-in worker polls the ledger), ``celery``
(``GPTIMG_EXAMPLE_BROKER``, default the local Redis), ``django-tasks`` (the database
backend) or ``procrastinate`` (``GPTIMG_EXAMPLE_PROCRASTINATE_DSN``).
"""

from __future__ import annotations

import os
from typing import Any

from gptimg_webhooks import Webhooks, health
from gptimg_webhooks.metrics import instrument, render

ENGINE = os.environ.get("GPTIMG_EXAMPLE_ENGINE", "")


def engine(target: str) -> tuple[dict[str, Any], Any]:
    """Return the receiver's options for the chosen engine, and the engine's app.

    ``target`` is the receiver's import path (``"module:attribute"``) for the worker.
    """
    if not ENGINE:
        return {}, None
    if ENGINE == "worker":
        return {"mode": "deferred"}, None
    if ENGINE == "celery":
        from celery import Celery

        from gptimg_webhooks.dispatch.celery import CeleryDispatcher

        broker = os.environ.get("GPTIMG_EXAMPLE_BROKER", "redis://127.0.0.1:6379/0")
        app = Celery("gptimg_example", broker=broker)
        return {"mode": "deferred", "dispatcher": CeleryDispatcher(app, target)}, app
    if ENGINE == "procrastinate":
        import procrastinate

        from gptimg_webhooks.dispatch.procrastinate import ProcrastinateDispatcher

        dsn = os.environ.get(
            "GPTIMG_EXAMPLE_PROCRASTINATE_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
        )
        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))
        dispatcher = ProcrastinateDispatcher(app, target)
        app.open()  # the receiver defers from its threads; the worker reopens it async
        return {"mode": "deferred", "dispatcher": dispatcher}, app
    if ENGINE == "django-tasks":
        from gptimg_webhooks.dispatch.django_tasks import DjangoTasksDispatcher

        tasks_settings = "examples.tasks_settings"
        if os.environ.setdefault("DJANGO_SETTINGS_MODULE", tasks_settings) == tasks_settings:
            import django

            django.setup()  # Starlette and Flask: a minimal Django for the task framework

        return {"mode": "deferred", "dispatcher": DjangoTasksDispatcher(target)}, None
    raise RuntimeError(
        f"GPTIMG_EXAMPLE_ENGINE={ENGINE!r}: not one of worker, celery, django-tasks, procrastinate"
    )


def observe(hooks: Webhooks) -> Webhooks:
    """Export the receiver's metrics (the default Prometheus registry); return it."""
    instrument(hooks)
    return hooks


def starlette_ops(app: Any, hooks: Webhooks) -> None:
    """Serve ``GET /metrics`` and ``GET /healthz`` beside a Starlette app."""
    from starlette.responses import Response
    from starlette.routing import Route

    async def metrics(request: Any) -> Response:
        body, content_type = render()
        return Response(body, media_type=content_type)

    app.router.routes += [Route("/metrics", metrics), Route("/healthz", health.asgi_app(hooks))]
