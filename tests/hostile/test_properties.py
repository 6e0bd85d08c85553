"""Properties of the sans-I/O core, for any input hypothesis can think of.

- sign-then-verify holds for any body and any secret (rotation lists included);
- any single-byte change to the body or the signature fails verification;
- the parser (``strictjson.loads`` + ``parse_event``) raises only the library's own errors;
- ``verify_request`` and ``Webhooks.handle`` (memory ledger) answer only documented statuses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gptimg_webhooks import Webhooks, sign, verify
from gptimg_webhooks._core import strictjson
from gptimg_webhooks._core.errors import RequestRejected, WebhookError
from gptimg_webhooks._core.events import parse_event
from gptimg_webhooks._core.protocol import Limits, verify_request
from gptimg_webhooks._core.signature import Verifier

SECRET = "whsec_properties_secret"
#: Every status the README's HTTP contract documents for a request.
DOCUMENTED = {200, 202, 400, 401, 405, 409, 413, 415, 500, 503}
#: What a receiver without handlers and with a memory ledger may answer.
NO_HANDLER_ANSWERS = {200, 202, 400, 401, 405, 409, 413, 415}

# Any secret the receiver accepts: ``whsec_`` then printable text without whitespace,
# quotes or commas (the separator of several secrets), not the ``whsec_...`` placeholder.
secrets = (
    st.text(
        st.characters(blacklist_categories=("Z", "C"), blacklist_characters="\"',"),
        min_size=1,
        max_size=74,
    )
    .filter(lambda rest: rest.strip(".…") and rest[-1] not in "\"'")
    .map(lambda rest: "whsec_" + rest)
)
bodies = st.binary(max_size=2048)
PROFILE = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROFILE
@given(body=bodies, secret=secrets)
def test_sign_then_verify_holds_for_any_body_and_secret(body: bytes, secret: str) -> None:
    signature = sign(body, secret)
    assert len(signature) == 64
    assert verify(body, signature, secret) is not None
    assert verify(body, signature.upper(), secret) is not None


@PROFILE
@given(body=bodies, others=st.lists(secrets, min_size=1, max_size=3), secret=secrets)
def test_any_active_secret_verifies_and_says_which(
    body: bytes, others: list[str], secret: str
) -> None:
    assume(secret not in others)
    match = verify(body, sign(body, secret), [*others, secret])
    assert match is not None
    assert match.index == len(others)


@PROFILE
@given(body=bodies.filter(bool), secret=secrets, data=st.data())
def test_any_single_byte_change_to_the_body_fails(
    body: bytes, secret: str, data: st.DataObject
) -> None:
    signature = sign(body, secret)
    at = data.draw(st.integers(0, len(body) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != body[at]))
    changed = body[:at] + bytes([new]) + body[at + 1 :]
    assert verify(changed, signature, secret) is None


@PROFILE
@given(body=bodies, secret=secrets, data=st.data())
def test_any_single_byte_change_to_the_body_length_fails(
    body: bytes, secret: str, data: st.DataObject
) -> None:
    signature = sign(body, secret)
    at = data.draw(st.integers(0, len(body)))
    grown = body[:at] + data.draw(st.binary(min_size=1, max_size=1)) + body[at:]
    assert verify(grown, signature, secret) is None
    if body:
        cut = body[: min(at, len(body) - 1)] + body[min(at, len(body) - 1) + 1 :]
        assert verify(cut, signature, secret) is None


@PROFILE
@given(body=bodies, secret=secrets, data=st.data())
def test_any_single_character_change_to_the_signature_fails(
    body: bytes, secret: str, data: st.DataObject
) -> None:
    signature = sign(body, secret)
    at = data.draw(st.integers(0, 63))
    char = data.draw(st.characters().filter(lambda c: c.lower() != signature[at]))
    assert verify(body, signature[:at] + char + signature[at + 1 :], secret) is None
    # Inserted or dropped characters fail too, never raise.
    assert verify(body, signature[:at] + char + signature[at:], secret) is None
    assert verify(body, signature[:at] + signature[at + 1 :], secret) is None


def _json_values() -> st.SearchStrategy[object]:
    leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=20,
    )


def _event_like() -> st.SearchStrategy[bytes]:
    data = st.fixed_dictionaries(
        {},
        optional={
            "generationId": st.text(max_size=10) | st.integers(),
            "status": st.text(max_size=10),
            "outputs": st.lists(st.dictionaries(st.sampled_from(["png", "width"]), _json_values())),
            "createdAt": st.text(max_size=30) | st.just("2026-04-26T01:23:45.000Z"),
            "costCredits": st.floats() | st.integers(),
        },
    )
    envelope = st.fixed_dictionaries(
        {"event": st.sampled_from(["generation.succeeded", "generation.failed", "x.y"])},
        optional={"data": data | _json_values()},
    )
    return envelope.map(lambda v: json.dumps(v, allow_nan=True).encode())


def _mutated(raw: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def go(draw: st.DrawFn) -> bytes:
        body = draw(raw)
        for _ in range(draw(st.integers(0, 3))):
            at = draw(st.integers(0, len(body)))
            body = body[:at] + draw(st.binary(max_size=3)) + body[at + draw(st.integers(0, 2)) :]
        return body

    return go()


parser_inputs = (
    bodies
    | _json_values().map(lambda v: json.dumps(v, allow_nan=True).encode())
    | _event_like()
    | _mutated(_event_like())
)


@PROFILE
@given(body=parser_inputs)
def test_the_parser_raises_only_its_own_errors(body: bytes) -> None:
    try:
        parse_event(strictjson.loads(body))
    except WebhookError as exc:
        found: WebhookError | None = exc
    else:
        found = None
    if found is not None:
        assert isinstance(found, RequestRejected), type(found)
        assert found.status == 400


header_names = st.sampled_from(
    [
        "X-Gptimg-Signature",
        "x-gptimg-signature",
        "X-Gptimg-Delivery",
        "X-Gptimg-Event",
        "Content-Encoding",
        "content-type",
        "X-Other",
    ]
)
header_values = st.text(max_size=80) | st.binary(max_size=80) | st.uuids().map(str)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, list[tuple[str | bytes, str | bytes]], bytes]:
    """Any method, headers and body, signed correctly some of the time."""
    body = draw(parser_inputs)
    headers: list[tuple[str | bytes, str | bytes]] = []
    if draw(st.booleans()):
        headers.append(("X-Gptimg-Signature", sign(body, SECRET)))
        headers.append(("X-Gptimg-Delivery", str(draw(st.uuids()))))
        headers.append(("X-Gptimg-Event", draw(st.sampled_from(["generation.succeeded", "x.y"]))))
    for name, value in draw(st.lists(st.tuples(header_names, header_values), max_size=6)):
        as_bytes = draw(st.booleans())
        headers.append((name.encode() if as_bytes else name, value))
    method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "HEAD"]))
    return method, headers, body


LIMITS = Limits(Verifier([SECRET]), max_body_size=4096, max_event_age=3600)


@PROFILE
@given(request=requests())
def test_verify_request_raises_only_documented_rejections(
    request: tuple[str, list[tuple[str | bytes, str | bytes]], bytes],
) -> None:
    method, headers, body = request
    status = 200
    try:
        verify_request(LIMITS, method, headers, body, time.time())
    except RequestRejected as exc:
        status = exc.status
    except WebhookError as exc:  # pragma: no cover - a failure's message
        raise AssertionError(f"undocumented {type(exc).__name__}") from exc
    assert status in DOCUMENTED


@pytest.fixture(scope="module")
def receiver() -> Iterator[Webhooks]:
    hooks = Webhooks(
        SECRET, store="memory://", include_shared=False, max_event_age=3600, sweep=False
    )
    yield hooks
    hooks.close()


@PROFILE
@given(request=requests())
def test_handle_answers_only_documented_statuses(
    receiver: Webhooks, request: tuple[str, list[tuple[str | bytes, str | bytes]], bytes]
) -> None:
    method, headers, body = request
    answer = receiver.handle(method, headers, body)
    assert answer.status in NO_HANDLER_ANSWERS, (answer.status, answer.body)
    found = json.loads(answer.body)
    assert found["ok"] is (answer.status < 300)
    if answer.status >= 400:
        assert found["error"]


KNOWN_FIELDS = {
    "generationId",
    "type",
    "status",
    "outputs",
    "error",
    "costCredits",
    "createdAt",
    "completedAt",
}


@PROFILE
@given(
    extra=st.dictionaries(
        st.text(min_size=1, max_size=12).filter(lambda k: k not in KNOWN_FIELDS),
        _json_values().filter(lambda v: not isinstance(v, float)),
        max_size=5,
    )
)
def test_unknown_fields_are_kept_not_refused(extra: dict[str, object]) -> None:
    body = json.dumps(
        {"event": "generation.succeeded", "data": {"generationId": "gen_x", **extra}}
    ).encode()
    try:
        value = strictjson.loads(body)
    except RequestRejected:
        assume(False)  # strict JSON refused the extra value itself (a surrogate, a NUL, ...)
    event = parse_event(value)
    kept = dict(event.data.model_extra or {})  # type: ignore[union-attr]
    assert kept == extra
