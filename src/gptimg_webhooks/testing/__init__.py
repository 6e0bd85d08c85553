"""Test kit: sample events, signed deliveries, a client, the provider's retry policy.

::

    from gptimg_webhooks.testing import WebhookClient, events

    with WebhookClient(app, secret) as client:           # ASGI, WSGI, Flask, or a URL
        result = client.deliver(events.succeeded())
        assert result.processed
        assert client.replay(result).duplicate           # same body, forged fresh id

The pytest plugin (:mod:`.pytest_plugin`) wraps the same pieces as fixtures.
:class:`LocalProvider` (the provider's API and webhooks as an ASGI app) needs the
``cli`` extra and is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .client import DeliveryResult, WebhookClient
from .deliveries import SignedDelivery, random_secret, signed
from .factories import EventFactory, Sample, events, wire_json
from .gallery import Gallery, render_gallery
from .simulator import Attempt, Clock, FakeClock, Policy, Report, SimEvent, Simulator

if TYPE_CHECKING:
    from .provider import LocalProvider

__all__ = [
    "Attempt",
    "Clock",
    "DeliveryResult",
    "EventFactory",
    "FakeClock",
    "Gallery",
    "LocalProvider",
    "Policy",
    "Report",
    "Sample",
    "SignedDelivery",
    "SimEvent",
    "Simulator",
    "WebhookClient",
    "events",
    "random_secret",
    "render_gallery",
    "signed",
    "wire_json",
]


def __getattr__(name: str) -> Any:
    # The provider needs Starlette: importing the test kit (and the pytest plugin) must not.
    if name == "LocalProvider":
        from .provider import LocalProvider

        return LocalProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
