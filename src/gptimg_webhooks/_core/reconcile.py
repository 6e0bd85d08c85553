"""Never miss a generation: poll the provider for outcomes no webhook brought.

Webhooks are best effort on the provider's side: four attempts over about 12.5 minutes,
then nothing, and a disabled endpoint gets nothing at all. With reconciliation on, every
generation the app submitted is remembered in the ledger (:meth:`Webhooks.watch`); one
that has no terminal delivery after ``after`` seconds is polled (``GET
/api/v1/generations/:id``), and its terminal outcome runs the same handlers through the
same ledger.

Exactly once, in either order: a terminal delivery and a poll of the same generation
both take the generation's gate record (``<account:>generation/<id>``) before any handler
runs; whoever takes it second finds it done (or in progress) and runs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .errors import ConfigurationError
from .events import Event, Generation, GenerationFailed, GenerationSucceeded

__all__ = ["Poll", "Reconciliation", "generation_key", "is_generation_key", "terminal_event"]

#: ``poll(generation_id, account) -> Generation``: ask the provider (``account`` is None
#: for a receiver without accounts). :func:`gptimg_webhooks.client.poller` builds one.
Poll = Callable[[str, "str | None"], Generation]

_GATE = "generation/"


@dataclass(frozen=True)
class Reconciliation:
    """When and how to poll: ``after`` seconds without a terminal delivery, then every
    ``every`` seconds while the generation runs, at most ``max_polls`` times."""

    poll: Poll
    #: The provider's last retry comes about 12.5 minutes after the first attempt.
    after: float = 15 * 60.0
    every: float = 60.0
    max_polls: int = 240

    def __post_init__(self) -> None:
        if self.after < 0 or self.every <= 0 or self.max_polls < 1:
            raise ConfigurationError("reconciliation needs after >= 0, every > 0, max_polls >= 1")


def generation_key(namespace: str, generation_id: str) -> str:
    """Return the ledger key of a generation's gate; ``namespace``: ``"<account>:"`` or ``""``."""
    return f"{namespace}{_GATE}{generation_id}"


def is_generation_key(key: str) -> bool:
    """Tell a generation's gate record from a delivery's record."""
    return key.partition(":")[2].startswith(_GATE) or key.startswith(_GATE)


def terminal_event(generation: Generation) -> Event | None:
    """Build the event a terminal generation's webhook carries; None while it runs."""
    if generation.status == "succeeded":
        return GenerationSucceeded(event="generation.succeeded", data=generation)
    if generation.status in ("failed", "blocked"):
        return GenerationFailed(event="generation.failed", data=generation)
    return None
