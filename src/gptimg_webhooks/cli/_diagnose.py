"""Explain why a captured request's signature does not verify (the ``verify`` command).

The search is small and exhaustive: every plausible key (the secret as configured,
trimmed, unquoted, base64-decoded Svix-style, ...) against every plausible body (as
captured, decompressed, re-serialised the usual ways, newline-changed). The first pair
that reproduces the signature names the cause.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import hmac
import json
import logging
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from gptimg_webhooks._core.errors import ConfigurationError
from gptimg_webhooks._core.signature import Secret, check_secret, secret_id

__all__ = ["Answer", "Diagnosis", "Finding", "diagnose", "receiver_answer"]

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class Finding:
    """One named cause or warning."""

    code: str
    message: str


@dataclass(frozen=True)
class Answer:
    """What the library's receiver would answer the request (a fresh delivery)."""

    status: int
    code: str
    message: str

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Diagnosis:
    """Whether the library would accept the signature, and why not."""

    valid: bool = False
    #: Index and fingerprint of the secret that matched.
    matched: tuple[int, str] | None = None
    causes: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    #: The receiver's answer; None when it would refuse to start with these secrets.
    answer: Answer | None = None

    @property
    def accepted(self) -> bool:
        """Return whether the receiver would answer 2xx."""
        return self.answer is not None and self.answer.accepted

    def as_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "accepted": self.accepted,
            "answer": self.answer.__dict__ if self.answer is not None else None,
            "matched": {"index": self.matched[0], "id": self.matched[1]} if self.matched else None,
            "causes": [f.__dict__ for f in self.causes],
            "warnings": [f.__dict__ for f in self.warnings],
        }


_UPPERCASE = Finding(
    "uppercase_signature",
    "the signature is uppercase hex: this library accepts it, but a strict check against "
    "lowercase hex (the provider's Node example) would not",
)


def _values(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name]


def _hmac(key: bytes, body: bytes) -> str:
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def _normalise(raw: str, diag: Diagnosis) -> str | None:
    """Strip what people and proxies add around a signature; note each thing removed."""
    value = raw
    if value != value.strip():
        diag.causes.append(
            Finding("signature_whitespace", "the signature header has whitespace around it")
        )
        value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        diag.causes.append(Finding("signature_quoted", "the signature header is quoted"))
        value = value[1:-1].strip()
    if value.lower().startswith("sha256="):
        diag.causes.append(
            Finding(
                "sha256_prefix",
                "the signature has a 'sha256=' prefix (GitHub style); this provider sends "
                "the bare hex digest, and the library requires exactly 64 hex digits",
            )
        )
        value = value[7:].strip()
    if _HEX64.fullmatch(value):
        if value != value.lower():
            diag.warnings.append(_UPPERCASE)
        return value.lower()
    try:
        decoded = base64.b64decode(value.split(",")[-1], validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == 32:
        diag.causes.append(
            Finding(
                "base64_signature",
                "the signature is base64 (Svix / Standard Webhooks style); this provider "
                "sends lowercase hex",
            )
        )
        return decoded.hex()
    diag.causes.append(
        Finding(
            "malformed_signature",
            f"the signature is not 64 hex digits ({len(value)} characters): it was "
            "truncated or is not this provider's signature",
        )
    )
    return None


def _keys(secrets: Sequence[str]) -> Iterator[tuple[int, str | None, bytes]]:
    """Yield (secret index, cause code or None, key bytes) for each plausible key."""
    for i, raw in enumerate(secrets):
        stripped = raw.strip()
        unquoted = stripped.strip("\"'").strip()
        yield i, None, stripped.encode()
        if raw != stripped:
            yield i, "secret_whitespace_or_quotes", raw.encode()
        if unquoted != stripped:
            yield i, "secret_whitespace_or_quotes", unquoted.encode()
        for padded in (f"{unquoted}\n", f"{unquoted}\r\n", f" {unquoted}", f"{unquoted} "):
            yield i, "secret_whitespace_or_quotes", padded.encode()
        for quoted in (f'"{unquoted}"', f"'{unquoted}'"):
            yield i, "secret_whitespace_or_quotes", quoted.encode()
        if unquoted.startswith("whsec_"):
            tail = unquoted[6:]
            for decode in (base64.b64decode, base64.urlsafe_b64decode):
                try:
                    key = decode(tail + "=" * (-len(tail) % 4))
                except (binascii.Error, ValueError):
                    continue
                if key:
                    yield i, "base64_decoded_key", key
            yield i, "secret_without_prefix", tail.encode()


_ENCODINGS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.decompress,
    "x-gzip": gzip.decompress,
}


def _decompress(body: bytes, encodings: list[str]) -> tuple[str, bytes] | None:
    """Undo a proxy's compression, judged by Content-Encoding or the magic bytes."""
    names = [e.strip().lower() for v in encodings for e in v.split(",") if e.strip()]
    names = [n for n in names if n != "identity"]
    if body[:2] == b"\x1f\x8b":
        names.append("gzip")
    elif len(body) > 2 and body[0] == 0x78 and (body[0] * 256 + body[1]) % 31 == 0:
        names.append("deflate")
    for name in names:
        try:
            if name == "br":
                import brotli  # type: ignore[import-not-found,unused-ignore]

                return name, bytes(brotli.decompress(body))
            if name == "deflate":
                try:
                    return name, zlib.decompress(body)
                except zlib.error:
                    return name, zlib.decompress(body, -zlib.MAX_WBITS)
            if name in _ENCODINGS:
                return name, _ENCODINGS[name](body)
        except Exception:  # noqa: S112 - any failure means "not this encoding"
            continue
    if names:
        return names[0], b""
    return None


def _bodies(body: bytes) -> Iterator[tuple[str, bytes]]:
    """Yield (how the signed bytes differ, candidate body) for the usual re-encodings."""
    yield "", body
    seen = {body}

    def fresh(label: str, candidate: bytes) -> Iterator[tuple[str, bytes]]:
        if candidate not in seen:
            seen.add(candidate)
            yield label, candidate

    yield from fresh("a trailing newline was added", body.rstrip(b"\r\n"))
    yield from fresh("a trailing newline was removed", body + b"\n")
    yield from fresh("line endings were changed to CRLF", body.replace(b"\r\n", b"\n"))
    yield from fresh("line endings were changed to LF", body.replace(b"\n", b"\r\n"))
    yield from fresh("a byte-order mark was added", body.removeprefix(b"\xef\xbb\xbf"))
    yield from fresh("surrounding whitespace was changed", body.strip())
    try:
        payload = json.loads(body.decode("utf-8-sig"))
    except ValueError:
        return
    forms = {
        "compact JSON (JSON.stringify)": {"separators": (",", ":"), "ensure_ascii": False},
        "compact JSON with \\u escapes": {"separators": (",", ":"), "ensure_ascii": True},
        "json.dumps defaults": {},
        "json.dumps without \\u escapes": {"ensure_ascii": False},
        "compact JSON, sorted keys": {"separators": (",", ":"), "sort_keys": True},
        "json.dumps, sorted keys": {"sort_keys": True},
        "JSON indented by 2": {"indent": 2, "ensure_ascii": False},
        "JSON indented by 4": {"indent": 4},
    }
    for name, options in forms.items():
        text = json.dumps(payload, **options).encode("utf-8")  # type: ignore[arg-type]
        yield from fresh(f"re-serialised: the signed bytes are {name}", text)
        yield from fresh(f"re-serialised: the signed bytes are {name} + newline", text + b"\n")
    # Keys reordered (sorted, say): rebuild the provider's order, then its compact form.
    ordered = json.dumps(_provider_order(payload), separators=(",", ":"), ensure_ascii=False)
    yield from fresh(
        "keys reordered: the signed bytes are compact JSON in the provider's key order",
        ordered.encode("utf-8"),
    )


_ORDER = {
    k: i
    for i, k in enumerate(
        [
            "event",
            "data",
            "generationId",
            "type",
            "status",
            "outputs",
            "png",
            "webp",
            "width",
            "height",
            "error",
            "costCredits",
            "createdAt",
            "completedAt",
        ]
    )
}


def _provider_order(value: Any) -> Any:
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: _ORDER.get(k, len(_ORDER)))
        return {k: _provider_order(value[k]) for k in keys}
    if isinstance(value, list):
        return [_provider_order(v) for v in value]
    return value


_EXPLAIN = {
    "secret_whitespace_or_quotes": (
        "the secret has whitespace, a newline or quotes around it: the signature matches "
        "the secret {which}; copy the value exactly, without quotes or a trailing newline"
    ),
    "base64_decoded_key": (
        "the key was base64-decoded Svix-style: the signature matches HMAC keyed with "
        "base64-decode(part after 'whsec_'). This provider keys the HMAC with the whole "
        "'whsec_...' string as UTF-8, never decoded"
    ),
    "secret_without_prefix": (
        "the key lost its 'whsec_' prefix: the signature matches the secret without it; "
        "the prefix is part of the key"
    ),
}


def _usable(secrets: Sequence[str], diag: Diagnosis) -> dict[int, Secret]:
    """Return the secrets the receiver would accept, by index; name the refused ones."""
    usable: dict[int, Secret] = {}
    for i, raw in enumerate(secrets):
        value = raw.strip()
        try:
            check_secret(value, i)
        except ConfigurationError as exc:
            quoted = bool(value) and (value[0] in "\"'" or value[-1] in "\"'")
            diag.causes.append(
                Finding(
                    "secret_whitespace_or_quotes" if quoted else "invalid_secret",
                    f"the configured {exc}: the receiver refuses to start with it",
                )
            )
            continue
        usable[i] = Secret(value, i)
    return usable


def _match(usable: dict[int, Secret], body: bytes, signature: str) -> tuple[int, str] | None:
    if not _HEX64.fullmatch(signature):
        return None
    for i, secret in usable.items():
        if hmac.compare_digest(secret.digest(body), signature.lower()):
            return i, secret.id
    return None


def receiver_answer(
    body: bytes, headers: Sequence[tuple[str, str]], secrets: Sequence[str]
) -> Answer | None:
    """Run the request through the library's own receiver (no handlers, a fresh ledger).

    Return its answer, or None when the secrets keep the receiver from starting.
    """
    from gptimg_webhooks._core.receiver import Webhooks
    from gptimg_webhooks.stores.memory import MemoryStore

    try:
        hooks = Webhooks([s.strip() for s in secrets], store=MemoryStore(), include_shared=False)
    except ConfigurationError:
        return None
    logger = logging.getLogger("gptimg_webhooks")
    was, logger.disabled = logger.disabled, True  # its rejection log would repeat the verdict
    try:
        response = hooks.handle("POST", headers, body)
    finally:
        logger.disabled = was
        hooks.close()
    data = response.json
    code = str(data.get("status") if data.get("ok") else data.get("error"))
    return Answer(response.status, code, str(data.get("message") or ""))


def diagnose(body: bytes, headers: Sequence[tuple[str, str]], secrets: Sequence[str]) -> Diagnosis:
    """Check ``body`` + ``headers`` against ``secrets`` as given (untrimmed), and explain."""
    diag = Diagnosis()
    diag.answer = receiver_answer(body, headers, secrets)
    usable = _usable(secrets, diag)
    signatures = _values(headers, "x-gptimg-signature")
    _check_headers(body, headers, diag)
    if not signatures:
        diag.causes.append(Finding("missing_signature", "no X-Gptimg-Signature header"))
        return diag
    if len(signatures) > 1 or "," in signatures[0]:
        diag.causes.append(
            Finding(
                "repeated_signature",
                "the signature header appears more than once (or was comma-folded by a "
                "proxy); the library rejects that",
            )
        )
    raw = signatures[0].split(",")[0] if len(signatures) == 1 else signatures[0]
    match = _match(usable, body, signatures[0]) if len(signatures) == 1 else None
    if match is not None:
        diag.valid, diag.matched = True, match
        if any(c in "ABCDEF" for c in signatures[0]):
            diag.warnings.append(_UPPERCASE)
        for i, s in enumerate(secrets):
            if s != s.strip():
                diag.warnings.append(
                    Finding(
                        "secret_whitespace_or_quotes",
                        f"secret #{i} has whitespace around it: this library trims it, "
                        "hand-written code may not",
                    )
                )
        return diag

    signature = _normalise(raw, diag)
    if signature is None:
        return diag
    if not body:
        diag.causes.append(
            Finding(
                "empty_body",
                "the body is empty: the provider always signs a JSON body. Something read "
                "the request body before the check (a form parser, a middleware, a "
                "logging hook) or a proxy dropped it; verify the raw bytes as received",
            )
        )
        return diag
    decompressed = _decompress(body, _values(headers, "content-encoding"))
    if decompressed is not None:
        name, plain = decompressed
        how = (
            "the signature matches the decompressed body"
            if plain and _match(usable, plain, signature)
            else "the receiver must see the bytes the provider signed"
        )
        diag.causes.append(
            Finding(
                "compressed_body",
                f"a proxy compressed the body ({name}): {how}. Turn off request compression "
                "between the provider and the app (the library answers 415 to it)",
            )
        )
        if plain:
            body = plain

    for label, candidate in _bodies(body):
        for index, key_cause, key in _keys(secrets):
            if not hmac.compare_digest(_hmac(key, candidate), signature):
                continue
            diag.matched = (index, secret_id(secrets[index].strip()))
            if key_cause is not None and not any(c.code == key_cause for c in diag.causes):
                which = repr(key.decode("utf-8", "replace"))
                text = _EXPLAIN[key_cause].format(which=_mask(which))
                diag.causes.append(Finding(key_cause, text))
            if label:
                diag.causes.append(
                    Finding(
                        "reserialized_body",
                        f"the body is JSON-equal to a correctly signed one but its bytes "
                        f"differ ({label}): verify the raw request bytes, before any JSON "
                        "parsing or text decoding",
                    )
                )
            return diag

    if any(c.code == "compressed_body" for c in diag.causes):
        return diag
    ids = ", ".join(f"#{i} {secret_id(s.strip())}" for i, s in enumerate(secrets))
    try:
        json.loads(body.decode("utf-8"))
    except ValueError:
        diag.causes.append(
            Finding(
                "body_not_json",
                f"the body is not valid UTF-8 JSON ({len(body)} bytes), and no configured "
                f"secret signs it (secrets tried: {ids}): it was cut short (a proxy's size "
                "limit, a partial read) or changed on the way; the provider always signs a "
                "JSON object",
            )
        )
        return diag
    diag.causes.append(
        Finding(
            "wrong_secret_or_tampered_body",
            "no configured secret signs this body, nor any usual re-encoding of it "
            f"(secrets tried: {ids}). Either it was signed with another secret (another "
            "webhook's, or one rotated out), or the body was changed after signing: only "
            "the body is signed, so the request alone cannot tell the two apart. Check the "
            "secret first; then whether anything edits bodies on the way",
        )
    )
    return diag


def _mask(text: str) -> str:
    """Show a secret's shape (quotes, whitespace) without its value."""
    return re.sub(r"whsec_([0-9A-Za-z+/=_-]{2})[0-9A-Za-z+/=_-]*", r"whsec_\1…", text)


def _check_headers(body: bytes, headers: Sequence[tuple[str, str]], diag: Diagnosis) -> None:
    delivery = _values(headers, "x-gptimg-delivery")
    event = _values(headers, "x-gptimg-event")
    if not delivery:
        diag.warnings.append(Finding("missing_delivery", "no X-Gptimg-Delivery header (400)"))
    elif not _UUID.fullmatch(delivery[0]):
        diag.warnings.append(Finding("bad_delivery", "X-Gptimg-Delivery is not a UUID (400)"))
    if not event:
        diag.warnings.append(Finding("missing_event", "no X-Gptimg-Event header (400)"))
    else:
        try:
            name = json.loads(body).get("event")
        except (ValueError, AttributeError):
            name = None
        if name is not None and name != event[0]:
            diag.warnings.append(
                Finding(
                    "event_mismatch",
                    f"X-Gptimg-Event says {event[0]!r} but the body says {name!r} (400)",
                )
            )
