"""Parse a body as strict JSON, once.

Rejects what ``json.loads`` lets through: invalid UTF-8, duplicate keys (a signed body
whose meaning depends on which duplicate a parser keeps), NaN and Infinity, integers
longer than a 64-bit value needs, nesting deeper than :data:`MAX_DEPTH`, and text no
store or handler can keep: lone surrogates (``"\\ud83d"``, what ``JSON.stringify``
makes of a string cut inside an emoji) and NUL characters.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import InvalidPayload

__all__ = ["MAX_DEPTH", "MAX_INT_DIGITS", "NUMBER_BOUND", "key_count", "loads", "plain"]

MAX_DEPTH = 16
MAX_INT_DIGITS = 20


# plain() screens for what a parser that keeps the last duplicate key could read
# differently from loads(), in C: bytes.translate drops the control characters JSON
# forbids and the backslash (faster than a character class in re), and one regex with a
# literal first byte finds a key apart from its colon.
_DOUBTFUL = bytes(c for c in range(0x20) if c not in b"\t\n\r") + b"\\"
_KEY_GAP = re.compile(rb'"[ \t\n\r]+:')
#: Below this magnitude a number has at most MAX_INT_DIGITS digits and a float is finite.
NUMBER_BOUND = 10**MAX_INT_DIGITS


def plain(body: bytes) -> bool:
    """Tell whether ``body`` holds nothing :func:`loads` would refuse but duplicate keys.

    True means: valid UTF-8 without a BOM, no escape at all (so no surrogate, no NUL, no
    quote inside a string), no control character, and every ``"`` before a ``:`` ends a
    key. A parser that accepts such a body agrees with :func:`loads` once
    :func:`key_count` matches the keys it kept, its nesting is at most :data:`MAX_DEPTH`
    and every number it read is below :data:`NUMBER_BOUND` in magnitude (NaN and the
    infinities are not). False only sends the body to :func:`loads` (it may be fine).
    """
    if not body.isascii():
        if body.startswith(b"\xef\xbb\xbf"):
            return False
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return False
    return len(body.translate(None, _DOUBTFUL)) == len(body) and not _KEY_GAP.search(body)


def key_count(body: bytes) -> int:
    """Count the keys of a :func:`plain` body (an upper bound: a string may start with ``:``)."""
    return body.count(b'":')


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # The key itself is body text: never echoed into answers or logs.
        raise InvalidPayload("duplicate key in an object")
    return obj


def _constant(name: str) -> Any:
    raise InvalidPayload(f"{name} is not JSON")


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidPayload("integer too large")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidPayload("number out of range")
    return value


_decoder = json.JSONDecoder(
    object_pairs_hook=_pairs, parse_constant=_constant, parse_int=_int, parse_float=_float
)


def _check_depth(value: Any) -> None:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidPayload(f"nesting deeper than {MAX_DEPTH}")
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))


def _check_text(value: Any) -> None:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            _check_string(node)
        elif isinstance(node, dict):
            for key, child in node.items():
                _check_string(key)
                stack.append(child)
        elif isinstance(node, list):
            stack.extend(node)


def _check_string(text: str) -> None:
    if "\0" in text:
        raise InvalidPayload("text holds a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPayload("text holds a lone UTF-16 surrogate") from None


def loads(body: bytes) -> Any:
    """Decode ``body`` or raise :class:`InvalidPayload`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidPayload("body is not valid UTF-8") from None
    try:
        value = _decoder.decode(text)
    except InvalidPayload:
        raise
    except RecursionError:
        raise InvalidPayload(f"nesting deeper than {MAX_DEPTH}") from None
    except ValueError as exc:  # JSONDecodeError and int() limits
        raise InvalidPayload(f"body is not JSON: {exc}") from None
    # Nesting deeper than MAX_DEPTH needs more brackets than that: count them in C first.
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and isinstance(value, dict | list):
        _check_depth(value)
    # Raw surrogates and NULs are invalid UTF-8 or JSON already; only escapes reach here.
    if b"\\u" in body and (b"\\ud" in body.lower() or b"\\u0000" in body):
        _check_text(value)
    return value
