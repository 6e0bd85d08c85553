"""The receiver and task code the engine tests run in real processes (server and worker).

Configured by the environment the tests set: ``GPTIMG_ENGINE`` (celery, django_tasks,
procrastinate), ``GPTIMG_WEBHOOK_SECRET``, ``GPTIMG_TEST_REDIS`` (ledger, effects and
Celery's broker), ``GPTIMG_TEST_PREFIX`` (keys of this run), ``GPTIMG_TEST_PG_DSN``
(procrastinate's database), ``GPTIMG_TEST_LEDGER`` (the ledger, default Redis; for
procrastinate, the PostgreSQL ledger in its database), ``GPTIMG_TEST_SWEEPER`` (who
re-dispatches lost pointers: ``keeper``, the receiver's own thread in each process, or
the engine's scheduler: ``beat`` for Celery, ``periodic`` for procrastinate),
``GPTIMG_TEST_GRACE`` (seconds a pending record waits before a sweep re-dispatches it).
Handlers push the generation id to a Redis list, so an effect that ran twice shows up
twice. ``kill*`` generations
SIGKILL their task process on the first attempt; ``fail*`` generations raise until the
``heal`` key exists.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gptimg_webhooks import Delivery, GenerationSucceeded, Webhooks
from gptimg_webhooks.asgi import WebhookMiddleware
from gptimg_webhooks.dispatch import Dispatcher, replay
from gptimg_webhooks.worker import Backoff

ENGINE = os.environ["GPTIMG_ENGINE"]
REDIS = os.environ["GPTIMG_TEST_REDIS"]
PREFIX = os.environ["GPTIMG_TEST_PREFIX"]
TARGET = "tests.dispatch.engine_app:hooks"
SWEEPER = os.environ.get("GPTIMG_TEST_SWEEPER", "keeper")
effects = redis.Redis.from_url(REDIS)

dispatcher: Dispatcher
engine_app: Any = None
if ENGINE == "celery":
    from celery import Celery

    from gptimg_webhooks.dispatch.celery import SWEEP_TASK, CeleryDispatcher

    engine_app = Celery("gptimg_engine_test", broker=REDIS)
    engine_app.conf.update(
        broker_transport_options={"global_keyprefix": f"{PREFIX}celery:"},
        task_default_queue=f"{PREFIX}q",
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    dispatcher = CeleryDispatcher(engine_app, TARGET)
    if SWEEPER == "beat":  # `celery beat` sends the sweep task every second
        engine_app.conf.beat_schedule = {"gptimg-sweep": {"task": SWEEP_TASK, "schedule": 1.0}}
elif ENGINE == "procrastinate":
    import procrastinate

    from gptimg_webhooks.dispatch.procrastinate import ProcrastinateDispatcher

    engine_app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=os.environ["GPTIMG_TEST_PG_DSN"])
    )
    dispatcher = ProcrastinateDispatcher(engine_app, TARGET)
    if SWEEPER == "periodic":  # the worker defers the sweep every second (a 6th cron field)
        dispatcher.periodic_sweep(cron="* * * * * *")
    if os.environ.get("GPTIMG_TEST_ROLE") == "server":
        engine_app.open()  # the receiver defers from threads: a sync pool
elif ENGINE == "django_tasks":
    import django

    django.setup()
    from gptimg_webhooks.dispatch.django_tasks import DjangoTasksDispatcher

    dispatcher = DjangoTasksDispatcher(TARGET)
else:  # pragma: no cover - a typo in a test
    raise RuntimeError(f"unknown engine {ENGINE!r}")

hooks = Webhooks(
    store=os.environ.get("GPTIMG_TEST_LEDGER") or f"{REDIS}?prefix={PREFIX}",
    mode="deferred",
    dispatcher=dispatcher,
    lease=3.0,
    sweep=SWEEPER == "keeper",
    sweep_interval=1.0,
    backoff=Backoff(max_attempts=3, initial=0.3, factor=1.0),
    include_shared=False,
)
hooks.redispatch_grace = float(os.environ.get("GPTIMG_TEST_GRACE", "5"))


@hooks.on("generation.succeeded")
def record_effect(event: GenerationSucceeded, delivery: Delivery) -> None:
    generation = event.data.generation_id
    if generation.startswith("kill") and delivery.attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    if generation.startswith("fail") and not effects.exists(f"{PREFIX}heal"):
        raise RuntimeError("failing on purpose until healed")
    effects.rpush(f"{PREFIX}effects", generation)


async def replay_route(request: Request) -> JSONResponse:
    return JSONResponse({"replayed": replay(hooks, request.path_params["key"])})


async def ready(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


app = WebhookMiddleware(
    Starlette(
        routes=[
            Route("/generations", ready),
            Route("/replay/{key}", replay_route, methods=["POST"]),
        ]
    ),
    hooks,
)
