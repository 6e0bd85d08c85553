"""Django signals for deliveries, for people who prefer signals to ``@on``.

``sender`` is the event's class (``GenerationSucceeded``, ``GenerationFailed`` or
``UnknownEvent``), so ``delivery_processed.connect(fn, sender=GenerationSucceeded)``
hears one event only. Every signal gets ``event`` and ``delivery`` keyword arguments.

- :data:`delivery_received`: a verified delivery is about to be handled (new, or a retry
  of a failed one). Sent before the ``@on`` handlers, inside the ledger's transaction:
  its receivers act as handlers, so their ORM writes commit with the done mark and a
  receiver that raises fails the delivery.
- :data:`delivery_processed`: the handlers ran and the done mark is committed
  (``transaction.on_commit``). A receiver that raises is logged and changes nothing.
- :data:`delivery_failed`: a handler raised; sent after the rollback, with ``exception``.

A signal with no receivers costs nothing and changes no answer.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.dispatch import Signal

from .._core.events import Event
from .._core.handlers import Delivery, HandlerSpec

__all__ = ["delivery_failed", "delivery_processed", "delivery_received"]

logger = logging.getLogger("gptimg_webhooks")

delivery_received = Signal()
delivery_processed = Signal()
delivery_failed = Signal()


def _send_received(event: Event, delivery: Delivery) -> None:
    delivery_received.send(type(event), event=event, delivery=delivery)


def processed_spec(alias: str) -> HandlerSpec:
    """Return the last handler of a chain: send ``delivery_processed`` once committed."""

    def send(event: Event, delivery: Delivery) -> None:
        def fire() -> None:
            found = delivery_processed.send_robust(type(event), event=event, delivery=delivery)
            for receiver, result in found:
                if isinstance(result, Exception):
                    logger.error("delivery_processed receiver %r raised", receiver, exc_info=result)

        # Outside an atomic block (a non-transactional store) this runs at once.
        transaction.on_commit(fire, using=alias)

    return HandlerSpec(send, True, False)


RECEIVED = HandlerSpec(_send_received, True, False)


def send_failed(exc: BaseException, event: Event, delivery: Delivery) -> Any:
    """Error hook: send ``delivery_failed``."""
    return delivery_failed.send(type(event), event=event, delivery=delivery, exception=exc)
