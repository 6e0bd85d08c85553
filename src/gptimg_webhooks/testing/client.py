"""Post signed deliveries through an app and read its answers as plain facts.

::

    client = WebhookClient(app, secret)
    result = client.deliver(events.succeeded())
    assert result.processed
    assert client.deliver(result.delivery).duplicate          # a retry
    assert client.deliver(result.delivery.forged()).duplicate  # a replay, fresh id
    assert client.deliver(events.succeeded(), wrong_secret=True).unauthorized
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ._transport import Answer, Transport, transport_for
from .deliveries import SignedDelivery, signed
from .factories import EventFactory, Sample, events

__all__ = ["DeliveryResult", "WebhookClient"]


@dataclass(frozen=True)
class DeliveryResult:
    """The app's answer to one delivery, with the delivery that was sent."""

    delivery: SignedDelivery
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def json(self) -> Any:
        """Return the decoded answer body, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def outcome(self) -> str | None:
        """Return the receiver's word for a 2xx (``processed``, ``duplicate``, ...)."""
        data = self.json
        return data.get("status") if isinstance(data, dict) else None

    @property
    def error(self) -> str | None:
        """Return the error code of a 4xx/5xx (``invalid_signature``, ...)."""
        data = self.json
        return data.get("error") if isinstance(data, dict) else None

    @property
    def accepted(self) -> bool:
        """True for any 2xx: the provider will not retry."""
        return 200 <= self.status < 300

    @property
    def processed(self) -> bool:
        """True when the handlers ran and succeeded just now."""
        return self.status == 200 and self.outcome == "processed"

    @property
    def duplicate(self) -> bool:
        """True when the app recognised an already-processed delivery (handlers not run)."""
        return self.status == 200 and self.outcome == "duplicate"

    @property
    def ignored(self) -> bool:
        """True when the event had no handler (an unknown event without catch-all)."""
        return self.status == 200 and self.outcome == "ignored"

    @property
    def queued(self) -> bool:
        """True when a deferred receiver recorded it for workers (202)."""
        return self.status == 202

    @property
    def in_progress(self) -> bool:
        """True for 409: a copy is being processed right now; the provider retries."""
        return self.status == 409

    @property
    def unauthorized(self) -> bool:
        """True for 401: signature missing or wrong."""
        return self.status == 401

    @property
    def rejected(self) -> bool:
        """True for any 4xx: the request itself was refused."""
        return 400 <= self.status < 500

    @property
    def failed(self) -> bool:
        """True for any 5xx: a handler raised (or the store was down); the provider retries."""
        return self.status >= 500

    def __repr__(self) -> str:
        word = self.outcome or self.error or ""
        return f"<DeliveryResult {self.status} {word} delivery={self.delivery.delivery_id}>"


class WebhookClient:
    """Deliver signed samples to an app (ASGI, WSGI, Flask, Django) or a URL."""

    def __init__(
        self,
        target: Any,
        secret: str,
        *,
        path: str = "/hooks/gptimg",
        timeout: float = 5.0,
        factory: EventFactory = events,
    ) -> None:
        self.transport: Transport = transport_for(target, path)
        self.secret = secret
        self.path = path
        self.timeout = timeout
        self.events = factory

    def sign(
        self, event: Sample[Any] | bytes | str | None = None, **options: Any
    ) -> SignedDelivery:
        """Build a signed delivery without sending it (see :func:`signed` for options)."""
        sample = event if event is not None else self.events.succeeded()
        return signed(sample, self.secret, **options)

    def deliver(
        self, event: Sample[Any] | SignedDelivery | bytes | str | None = None, **options: Any
    ) -> DeliveryResult:
        """Sign (unless already signed) and post one delivery; return the app's answer.

        With no argument a fresh ``generation.succeeded`` sample is sent. ``options`` are
        those of :func:`~gptimg_webhooks.testing.signed` (``wrong_secret=True``, ...).
        """
        delivery = event if isinstance(event, SignedDelivery) else self.sign(event, **options)
        answer = self.transport.request(
            "POST", self.path, delivery.header_list(), delivery.body, self.timeout
        )
        return self._result(delivery, answer)

    def retry(self, result: DeliveryResult | SignedDelivery) -> DeliveryResult:
        """Send the same delivery again, same id: what the provider does after a non-2xx."""
        delivery = result.delivery if isinstance(result, DeliveryResult) else result
        return self.deliver(delivery)

    def replay(self, result: DeliveryResult | SignedDelivery) -> DeliveryResult:
        """Send the same signed body under a fresh delivery id: a replay attack."""
        delivery = result.delivery if isinstance(result, DeliveryResult) else result
        return self.deliver(delivery.forged())

    def request(
        self, method: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> DeliveryResult:
        """Send anything to the webhook path (a GET, a body without headers, ...)."""
        delivery = SignedDelivery(body, dict(headers or {}))
        answer = self.transport.request(
            method, self.path, delivery.header_list(), body, self.timeout
        )
        return self._result(delivery, answer)

    def _result(self, delivery: SignedDelivery, answer: Answer) -> DeliveryResult:
        return DeliveryResult(delivery, answer.status, answer.headers, answer.body)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> WebhookClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
