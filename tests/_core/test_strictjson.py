from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gptimg_webhooks import InvalidPayload
from gptimg_webhooks._core.strictjson import MAX_DEPTH, loads


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"a":"\xff"}', "UTF-8"),
        (b'{"a":1,"a":2}', "duplicate key"),
        (b'{"a":{"b":1,"b":1}}', "duplicate key"),
        (b'{"a":NaN}', "NaN"),
        (b'{"a":-Infinity}', "Infinity"),
        (b'{"a":1e999}', "out of range"),
        (b'{"a":' + b"1" * 21 + b"}", "integer too large"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nesting"),
        (b"[" * 100_000 + b"]" * 100_000, "nesting"),
        (b"", "not JSON"),
        (b"{'a': 1}", "not JSON"),
        (b'{"a":1} trailing', "not JSON"),
    ],
)
def test_rejects_what_plain_json_loads_lets_through(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidPayload, match=reason):
        loads(raw)


def test_accepts_nesting_up_to_the_limit() -> None:
    raw = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert loads(raw) is not None


def test_accepts_64_bit_integers_and_unicode() -> None:
    assert loads('{"n":-9223372036854775808,"s":"생성 ✓"}'.encode()) == {
        "n": -9223372036854775808,
        "s": "생성 ✓",
    }


# Text a store can keep: no lone surrogates (unencodable) and no NUL (refused on purpose).
keepable_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | keepable_text,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(keepable_text.filter(lambda k: len(k) <= 8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_round_trips_what_json_dumps_writes(value: object) -> None:
    assert loads(json.dumps(value).encode()) == value


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_invalid_payload(raw: bytes) -> None:
    with contextlib.suppress(InvalidPayload):
        loads(raw)


@pytest.mark.parametrize(
    "body",
    [
        b'{"data":{"error":"cut \\ud83d"}}',  # JSON.stringify of a string cut mid-emoji
        b'{"data":{"error":"\\uDE00 tail"}}',  # a low surrogate alone, upper-case escape
        b'{"\\ud800":1}',  # in a key
        b'{"generationId":"gen\\u0000x"}',  # NUL: PostgreSQL text cannot hold it
    ],
)
def test_text_no_store_can_keep_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidPayload, match=r"surrogate|NUL"):
        loads(body)


def test_escaped_surrogate_pairs_are_one_character_and_pass() -> None:
    assert loads(b'{"e":"\\ud83d\\ude00"}') == {"e": "\U0001f600"}
