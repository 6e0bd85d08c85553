"""A small gallery on top of the receiver: Starlette, pure ASGI middleware.

Run from the repository root::

    GPTIMG_WEBHOOK_SECRET=whsec_dev uvicorn examples.starlette_app.app:app --workers 4

The app itself (one handler recording each generation, ``/`` and ``/generations``, the
``gen_slow_``/``gen_flaky_`` demo behaviours) is built by
:func:`gptimg_webhooks.testing.demo_app.create_app`, so that ``gptimg-webhooks demo``
runs the very same gallery from an installed package.
"""

from __future__ import annotations

import os
from pathlib import Path

from examples.ops import engine, observe, starlette_ops
from gptimg_webhooks import Webhooks
from gptimg_webhooks.testing import Gallery
from gptimg_webhooks.testing.demo_app import create_app
from gptimg_webhooks.testing.gallery import example_options, example_prune_interval

DATA_DIR = os.environ.get("GPTIMG_EXAMPLE_DATA_DIR") or Path(__file__).parent / "data"
gallery = Gallery(DATA_DIR)
# Inline, or deferred on the engine GPTIMG_EXAMPLE_ENGINE names (engine_app: its worker's).
options, engine_app = engine("examples.starlette_app.app:hooks")
# GPTIMG_WEBHOOK_SECRET and GPTIMG_WEBHOOK_STORE from the environment; other arguments
# (max_event_age, retention, sweep_interval, ...) as JSON in GPTIMG_WEBHOOK_OPTIONS.
hooks = observe(Webhooks(**{**example_options(), **options}))  # type: ignore[arg-type]
hooks.prune_interval = example_prune_interval() or hooks.prune_interval
app = create_app(hooks, gallery)
starlette_ops(app, hooks)  # GET /metrics, GET /healthz
