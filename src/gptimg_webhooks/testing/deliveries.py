"""Signed deliveries: the body bytes and the headers the provider sends, good or broken.

::

    delivery = signed(events.succeeded(), secret)
    delivery.headers        # X-Gptimg-Signature, X-Gptimg-Delivery, X-Gptimg-Event, ...
    delivery.forged()       # same signed body under a fresh delivery id (a replay)
    delivery.tampered()     # body changed after signing
    signed(sample, secret, wrong_secret=True, omit=["X-Gptimg-Delivery"])
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gptimg_webhooks._core.events import Event
from gptimg_webhooks._core.signature import sign

from .factories import Sample

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "SignedDelivery",
    "random_secret",
    "signed",
]

SIGNATURE_HEADER = "X-Gptimg-Signature"
DELIVERY_HEADER = "X-Gptimg-Delivery"
EVENT_HEADER = "X-Gptimg-Event"
_SHORT = {"signature": SIGNATURE_HEADER, "delivery": DELIVERY_HEADER, "event": EVENT_HEADER}


def random_secret() -> str:
    """Return a fresh secret shaped like the provider's (``whsec_`` + 32 hex digits)."""
    return "whsec_" + secrets.token_hex(16)


@dataclass(frozen=True)
class SignedDelivery:
    """One request as the provider would send it; every variant is a new copy."""

    body: bytes
    headers: dict[str, str]
    #: The sample it was built from (None when built from raw bytes).
    sample: Sample[Any] | None = field(default=None, compare=False)

    def header(self, name: str) -> str | None:
        """Return a header's value, case-insensitively, or None when omitted."""
        name = _SHORT.get(name, name).lower()
        return next((v for k, v in self.headers.items() if k.lower() == name), None)

    @property
    def delivery_id(self) -> str | None:
        return self.header(DELIVERY_HEADER)

    @property
    def signature(self) -> str | None:
        return self.header(SIGNATURE_HEADER)

    @property
    def event_name(self) -> str | None:
        return self.header(EVENT_HEADER)

    @property
    def event(self) -> Event | None:
        """Return the typed event of the sample, when built from one."""
        return self.sample.event if self.sample is not None else None

    def with_headers(self, **headers: str | None) -> SignedDelivery:
        """Return a copy with headers set (``None`` removes one); ``_`` stands for ``-``.

        Short names work too: ``signature=``, ``delivery=``, ``event=``.
        """
        new = dict(self.headers)
        for raw, value in headers.items():
            name = _SHORT.get(raw, raw.replace("_", "-"))
            for existing in [k for k in new if k.lower() == name.lower()]:
                del new[existing]
            if value is not None:
                new[name] = value
        return replace(self, headers=new)

    def without(self, *names: str) -> SignedDelivery:
        """Return a copy with these headers omitted (``"signature"`` or the full name)."""
        return self.with_headers(**{_SHORT.get(n, n): None for n in names})

    def forged(self, delivery_id: str | None = None) -> SignedDelivery:
        """Return the same signed body under a fresh delivery id: a replay attack."""
        return self.with_headers(**{DELIVERY_HEADER: delivery_id or str(uuid.uuid4())})

    def tampered(self, body: bytes | None = None) -> SignedDelivery:
        """Return a copy whose body changed after signing (the signature no longer fits)."""
        if body is None:
            body = self.body.replace(b'"status":"', b'"status":"x', 1)
            if body == self.body:
                body = self.body + b" "
        return replace(self, body=body)

    def resigned(self, secret: str) -> SignedDelivery:
        """Return a copy signed again with ``secret`` (after editing the body, say)."""
        return self.with_headers(**{SIGNATURE_HEADER: sign(self.body, secret)})

    def uppercase(self) -> SignedDelivery:
        """Return a copy with the signature in uppercase hex (receivers must accept it)."""
        sig = self.signature
        return self.with_headers(**{SIGNATURE_HEADER: sig.upper() if sig else None})

    def header_list(self) -> list[tuple[str, str]]:
        return list(self.headers.items())


def signed(
    event: Sample[Any] | bytes | str,
    secret: str,
    *,
    delivery_id: str | None = None,
    event_name: str | None = None,
    wrong_secret: bool = False,
    tamper: bool = False,
    uppercase: bool = False,
    omit: Iterable[str] = (),
    headers: Mapping[str, str] | None = None,
    content_type: str | None = "application/json",
) -> SignedDelivery:
    """Sign a sample (or raw body) with ``secret`` and build the provider's headers.

    ``delivery_id`` defaults to a fresh UUID (use :meth:`SignedDelivery.forged` for a
    replay under a new id); ``event_name`` overrides ``X-Gptimg-Event`` (default: the
    body's event); ``wrong_secret`` signs with a random other secret; ``tamper`` changes
    the body after signing; ``uppercase`` writes the signature in uppercase hex; ``omit``
    drops headers (``"signature"``, ``"delivery"``, ``"event"`` or a full name);
    ``headers`` adds or replaces any header.
    """
    sample = event if isinstance(event, Sample) else None
    name: str | None
    if isinstance(event, Sample):
        body, name = event.body, event.name
    else:
        body = event.encode("utf-8") if isinstance(event, str) else event
        name = _event_of(body)
    key = random_secret() if wrong_secret else secret
    out: dict[str, str] = {
        "Content-Type": content_type or "",
        EVENT_HEADER: event_name or name or "generation.succeeded",
        SIGNATURE_HEADER: sign(body, key),
        DELIVERY_HEADER: delivery_id or str(uuid.uuid4()),
    }
    if content_type is None:
        del out["Content-Type"]
    delivery = SignedDelivery(body, out, sample)
    if tamper:
        delivery = delivery.tampered()
    if uppercase:
        delivery = delivery.uppercase()
    if headers:
        delivery = delivery.with_headers(**dict(headers))
    omitted = list(omit)
    return delivery.without(*omitted) if omitted else delivery


def _event_of(body: bytes) -> str | None:
    import json

    try:
        payload = json.loads(body)
    except ValueError:
        return None
    name = payload.get("event") if isinstance(payload, dict) else None
    return name if isinstance(name, str) else None
