"""Sign and verify ``X-Gptimg-Signature``: lowercase hex HMAC-SHA256 of the raw body.

The key is the secret string exactly as the provider shows it, ``whsec_`` prefix
included, as UTF-8 bytes. It is never base64-decoded (Svix and Standard Webhooks
secrets look alike but are decoded; this one is not).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import ConfigurationError

__all__ = [
    "SECRET_ENV",
    "SECRET_PREFIX",
    "Match",
    "Secret",
    "Verifier",
    "check_secret",
    "parse_secrets",
    "secret_id",
    "sign",
    "verify",
]

SECRET_ENV = "GPTIMG_WEBHOOK_SECRET"  # noqa: S105 - a variable name, not a secret
SECRET_PREFIX = "whsec_"  # noqa: S105 - the provider's prefix, not a secret
_BLOCK = 64  # SHA-256 block size
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


_HINT = (
    "set it to the whsec_... value the provider showed once when the webhook was "
    f"registered (env {SECRET_ENV}, comma separated while rotating)"
)


def check_secret(value: object, index: int = 0) -> None:
    """Raise :class:`ConfigurationError` saying what is wrong with a secret; never echo it.

    A secret is the provider's ``whsec_`` string exactly: the prefix, then the rest,
    with no whitespace and no quotes. Anything else could never verify a delivery, so
    it is refused at start-up rather than answering 401 to every correctly signed one.
    """
    which = "webhook secret" if index == 0 else f"webhook secret #{index}"
    if not isinstance(value, str):
        raise ConfigurationError(f"{which} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ConfigurationError(f"{which} is empty or blank: {_HINT}")
    if value[0] in "\"'" or value[-1] in "\"'":
        raise ConfigurationError(
            f"{which} has quotes around it ({len(value)} characters, quotes included): the "
            "quotes became part of the value (a .env file or a YAML/Docker setting that "
            "keeps them); remove them"
        )
    if value != value.strip():
        raise ConfigurationError(
            f"{which} has whitespace or a newline around it: remove it (the key is the "
            "exact string, and the provider signs with the exact string)"
        )
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ConfigurationError(f"{which} contains whitespace or control characters")
    if not value.startswith(SECRET_PREFIX):
        raise ConfigurationError(
            f"{which} does not start with {SECRET_PREFIX!r}: it is not a webhook secret "
            "(not an API key gimg_..., not the webhook id); the prefix is part of the key; " + _HINT
        )
    rest = value[len(SECRET_PREFIX) :]
    if not rest:
        raise ConfigurationError(f"{which} is only the {SECRET_PREFIX!r} prefix: {_HINT}")
    if not rest.strip(".…"):
        raise ConfigurationError(f"{which} is the placeholder 'whsec_...': {_HINT}")


def secret_id(value: str) -> str:
    """Return the short fingerprint that names a secret in logs without revealing it."""
    return hashlib.sha256(b"gptimg-secret-id:" + value.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Match:
    """Which configured secret verified a delivery (never the secret itself)."""

    index: int
    id: str


class Secret:
    """One signing secret with its HMAC pads precomputed, so a check is two hash copies.

    The value is checked first (:func:`check_secret`): ``whsec_`` and something after
    it, no whitespace, no quotes.
    """

    __slots__ = ("_inner", "_outer", "id", "index", "match")

    def __init__(self, value: str, index: int = 0) -> None:
        check_secret(value, index)
        key = value.encode("utf-8")
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))
        self.index = index
        # A short fingerprint names the secret in logs and metadata without revealing it.
        self.id = secret_id(value)
        #: What a delivery this secret verified reports (immutable: one for all).
        self.match = Match(index, self.id)

    def digest(self, body: bytes) -> str:
        """Return the lowercase hex signature of ``body``."""
        inner = self._inner.copy()
        inner.update(body)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def __repr__(self) -> str:
        return f"Secret(id={self.id!r}, index={self.index})"


class Verifier:
    """Check a body against every active secret, for rotation without downtime."""

    __slots__ = ("secrets",)

    def __init__(self, secrets: Iterable[str]) -> None:
        values = list(secrets)
        if not values:
            raise ConfigurationError(
                f"no webhook secret configured: pass secret=... or set {SECRET_ENV}"
            )
        self.secrets: tuple[Secret, ...] = tuple(Secret(v, i) for i, v in enumerate(values))

    def verify(self, body: bytes, signature: str | None) -> Match | None:
        """Return the matching secret, or None for any mismatch; never raise."""
        if signature is None or len(signature) != 64 or not _HEX64.fullmatch(signature):
            return None
        signature = signature.lower()
        for secret in self.secrets:
            if hmac.compare_digest(secret.digest(body), signature):
                return secret.match
        return None


def parse_secrets(value: str | Sequence[str] | None) -> list[str]:
    """Split configured secrets; fall back to ``GPTIMG_WEBHOOK_SECRET`` (comma separated).

    Whitespace around each value is trimmed (a trailing newline, a space after a comma);
    each value must then pass :func:`check_secret`.
    """
    if value is None:
        value = os.environ.get(SECRET_ENV)
        if value is None:
            raise ConfigurationError(
                f"no webhook secret configured: pass secret=... or set {SECRET_ENV}"
            )
    parts = value.split(",") if isinstance(value, str) else list(value)
    secrets = [p.strip() for p in parts]
    if not secrets:
        raise ConfigurationError(
            f"no webhook secret configured: pass secret=... or set {SECRET_ENV}"
        )
    if any(not s for s in secrets):
        raise ConfigurationError(
            f"webhook secret is empty or blank (env {SECRET_ENV} or secret=...): "
            "give one or more whsec_... values separated by commas"
        )
    for index, value in enumerate(secrets):
        check_secret(value, index)
    return secrets


def sign(body: bytes, secret: str) -> str:
    """Return the ``X-Gptimg-Signature`` value the provider would send for ``body``."""
    return Secret(secret).digest(body)


def verify(body: bytes, signature: str | None, secret: str | Sequence[str]) -> Match | None:
    """Check ``signature`` against ``body`` for one or several secrets; None on mismatch."""
    values = [secret] if isinstance(secret, str) else secret
    return Verifier(values).verify(body, signature)
