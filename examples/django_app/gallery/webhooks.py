"""Handlers, autodiscovered like admin.py: ``gptimg_webhooks.django`` imports this module."""

from __future__ import annotations

import time

from gptimg_webhooks import Delivery, GenerationFailed, GenerationSucceeded, on

from .models import Invocation


@on("generation.succeeded", "generation.failed")
def record(event: GenerationSucceeded | GenerationFailed, delivery: Delivery) -> None:
    """Append the generation to the gallery, in the ledger's transaction (ORM ledger)."""
    data = event.data
    # Demo behaviours, for tests and `gptimg-webhooks demo`:
    if data.generation_id.startswith("gen_slow_"):
        time.sleep(1.5)
    if data.generation_id.startswith("gen_flaky_") and delivery.attempt == 1:
        raise RuntimeError("flaky handler: fails on the first attempt")
    Invocation.objects.create(
        generation_id=data.generation_id,
        event=event.event,
        status=data.status,
        outputs=[o.model_dump() for o in data.outputs],
        error=data.error,
    )
