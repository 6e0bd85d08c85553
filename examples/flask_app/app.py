"""A small gallery on top of the receiver: Flask, with the ``GptimgWebhooks`` extension.

Run from the repository root::

    GPTIMG_WEBHOOK_SECRET=whsec_dev gunicorn examples.flask_app.app:app --workers 4
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from flask import Flask, Response, jsonify

from examples.ops import engine, observe
from gptimg_webhooks import Delivery, GenerationFailed, GenerationSucceeded, Webhooks, health
from gptimg_webhooks.flask import GptimgWebhooks
from gptimg_webhooks.metrics import render
from gptimg_webhooks.testing import Gallery, render_gallery
from gptimg_webhooks.testing.gallery import demo_plan, example_options, example_prune_interval

DATA_DIR = os.environ.get("GPTIMG_EXAMPLE_DATA_DIR") or Path(__file__).parent / "data"
gallery = Gallery(DATA_DIR)  # SQLite: every worker process sees the same rows
webhooks = GptimgWebhooks()
# Inline, or deferred on the engine GPTIMG_EXAMPLE_ENGINE names (engine_app: its worker's).
options, engine_app = engine("examples.flask_app.app:receiver")


def receiver() -> Webhooks:
    """The app's receiver (what the engine's worker runs)."""
    return webhooks.receiver


@webhooks.on("generation.succeeded", "generation.failed")
def record(event: GenerationSucceeded | GenerationFailed, delivery: Delivery) -> None:
    # Demo behaviours (slow, flaky, stalling ids), so tests can exercise retries.
    seconds, error = demo_plan(event, delivery.attempt)
    time.sleep(seconds)
    if error:
        raise RuntimeError(error)
    gallery.add(event)


def create_app() -> Flask:
    """Build the app; GPTIMG_WEBHOOK_SECRET and GPTIMG_WEBHOOK_STORE come from the environment."""
    app = Flask(__name__)
    # Other Webhooks(...) arguments (max_event_age, retention, ...) as JSON, for tests.
    app.config["GPTIMG_WEBHOOK_OPTIONS"] = {**example_options(), **options}
    webhooks.init_app(app)
    receiver = observe(webhooks.receiver)
    receiver.prune_interval = example_prune_interval() or receiver.prune_interval
    app.add_url_rule("/healthz", view_func=health.flask_view(receiver))

    @app.get("/metrics")
    def metrics() -> Response:
        body, content_type = render()
        return Response(body, content_type=content_type)

    @app.get("/")
    def index() -> Response:
        return Response(render_gallery(gallery.rows()), mimetype="text/html")

    @app.get("/generations")
    def generations() -> Response:
        return jsonify(gallery.rows())

    return app


app = create_app()
