"""The sans-I/O verification steps: authenticate, then decode."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from gptimg_webhooks import RequestRejected
from gptimg_webhooks._core.errors import EventMismatch, InvalidPayload, InvalidSignature
from gptimg_webhooks._core.protocol import (
    Limits,
    Signed,
    authenticate,
    decode,
    environ_headers,
    verify_request,
)
from gptimg_webhooks._core.signature import Verifier

from .conftest import SECRET, request

LIMITS = Limits(Verifier([SECRET]), max_body_size=1 << 20)


def test_authenticate_stops_before_the_parse_and_keys_the_body(body: bytes) -> None:
    broken = body[:-1]  # signed, but no longer JSON
    signed = authenticate(LIMITS, "POST", request(broken), broken)
    assert isinstance(signed, Signed)
    assert signed.key == hashlib.sha256(broken).hexdigest()
    assert signed.event_name == "generation.succeeded"
    with pytest.raises(InvalidPayload) as caught:
        decode(LIMITS, signed, time.time())
    assert caught.value.key == signed.key
    assert caught.value.entry is not None and caught.value.entry.body == broken


def test_authenticate_then_decode_is_verify_request(body: bytes) -> None:
    headers = request(body)
    whole = verify_request(LIMITS, "POST", headers, body, time.time())
    stepped = decode(LIMITS, authenticate(LIMITS, "POST", headers, body), time.time())
    assert whole == stepped
    assert (whole.key, whole.event_name) == (whole.entry.key, json.loads(body)["event"])


def test_a_forged_signature_is_refused_before_any_key_is_taken(body: bytes) -> None:
    with pytest.raises(InvalidSignature) as caught:
        authenticate(LIMITS, "POST", request(body, secret="whsec_other"), body)
    assert caught.value.key is None


def test_rejections_after_the_signature_carry_the_body_key(body: bytes) -> None:
    signed = authenticate(LIMITS, "POST", request(body, event="generation.failed"), body)
    with pytest.raises(EventMismatch) as caught:
        decode(LIMITS, signed, time.time())
    assert isinstance(caught.value, RequestRejected)
    assert caught.value.key == signed.key


def test_environ_headers_picks_the_protocols_four_by_their_cgi_names(body: bytes) -> None:
    environ = {
        "REQUEST_METHOD": "POST",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_HOST": "example.test",
        "HTTP_CONTENT_ENCODING": "identity",
        **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in request(body).items()},
    }
    picked = environ_headers(environ)
    assert sorted(name for name, _ in picked) == [
        "content-encoding",
        "x-gptimg-delivery",
        "x-gptimg-event",
        "x-gptimg-signature",
    ]
    assert verify_request(LIMITS, "POST", picked, body, time.time()).key == (
        hashlib.sha256(body).hexdigest()
    )
    assert environ_headers({"HTTP_HOST": "example.test"}) == []
