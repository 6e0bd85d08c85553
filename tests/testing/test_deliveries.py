from __future__ import annotations

from gptimg_webhooks import verify
from gptimg_webhooks.testing import events, signed


def test_signed_delivery_carries_the_three_headers_and_verifies(secret: str) -> None:
    sample = events.succeeded()
    d = signed(sample, secret)
    assert d.body == sample.body
    assert d.event_name == "generation.succeeded"
    assert len(d.delivery_id or "") == 36
    assert verify(d.body, d.signature, secret) is not None


def test_wrong_secret_and_tampered_body_do_not_verify(secret: str) -> None:
    assert verify(*_pair(signed(events.succeeded(), secret, wrong_secret=True)), secret) is None
    assert verify(*_pair(signed(events.succeeded(), secret).tampered()), secret) is None
    assert verify(*_pair(signed(events.succeeded(), secret, tamper=True)), secret) is None


def test_forged_copy_keeps_body_and_signature_under_a_fresh_id(secret: str) -> None:
    d = signed(events.succeeded(), secret)
    f = d.forged()
    assert (f.body, f.signature) == (d.body, d.signature)
    assert f.delivery_id != d.delivery_id


def test_omit_uppercase_and_header_overrides(secret: str) -> None:
    d = signed(events.failed(), secret, omit=["delivery", "X-Gptimg-Event"], uppercase=True)
    assert d.delivery_id is None and d.event_name is None
    assert d.signature == (d.signature or "").upper()
    assert verify(d.body, d.signature, secret) is not None  # the library accepts uppercase
    assert signed(events.failed(), secret, event_name="generation.succeeded").event_name == (
        "generation.succeeded"
    )


def _pair(d):  # type: ignore[no-untyped-def]
    return d.body, d.signature
