"""Handlers, autodiscovered like admin.py: ``gptimg_webhooks.django`` imports this module."""

from __future__ import annotations

import time

from gptimg_webhooks import Delivery, GenerationFailed, GenerationSucceeded, on
from gptimg_webhooks.testing.gallery import demo_plan

from .models import Invocation


@on("generation.succeeded", "generation.failed")
def record(event: GenerationSucceeded | GenerationFailed, delivery: Delivery) -> None:
    """Append the generation to the gallery, in the ledger's transaction (ORM ledger)."""
    data = event.data
    # Demo behaviours (slow, flaky, stalling ids), for tests and `gptimg-webhooks demo`:
    seconds, error = demo_plan(event, delivery.attempt)
    time.sleep(seconds)
    if error:
        raise RuntimeError(error)
    Invocation.objects.create(
        generation_id=data.generation_id,
        event=event.event,
        status=data.status,
        outputs=[o.model_dump() for o in data.outputs],
        error=data.error,
    )
