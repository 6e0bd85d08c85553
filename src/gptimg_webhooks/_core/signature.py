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

__all__ = ["SECRET_ENV", "Match", "Secret", "Verifier", "parse_secrets", "sign", "verify"]

SECRET_ENV = "GPTIMG_WEBHOOK_SECRET"  # noqa: S105 - a variable name, not a secret
_BLOCK = 64  # SHA-256 block size
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


class Secret:
    """One signing secret with its HMAC pads precomputed, so a check is two hash copies."""

    __slots__ = ("_inner", "_outer", "id", "index")

    def __init__(self, value: str, index: int = 0) -> None:
        if not isinstance(value, str) or not value.strip():
            raise ConfigurationError(
                "webhook secret is empty or blank: set it to the whsec_... value the "
                f"provider showed when the webhook was registered (env {SECRET_ENV})"
            )
        key = value.encode("utf-8")
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))
        self.index = index
        # A short fingerprint names the secret in logs and metadata without revealing it.
        self.id = hashlib.sha256(b"gptimg-secret-id:" + value.encode("utf-8")).hexdigest()[:12]

    def digest(self, body: bytes) -> str:
        """Return the lowercase hex signature of ``body``."""
        inner = self._inner.copy()
        inner.update(body)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def __repr__(self) -> str:
        return f"Secret(id={self.id!r}, index={self.index})"


@dataclass(frozen=True, slots=True)
class Match:
    """Which configured secret verified a delivery (never the secret itself)."""

    index: int
    id: str


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
                return Match(secret.index, secret.id)
        return None


def parse_secrets(value: str | Sequence[str] | None) -> list[str]:
    """Split configured secrets; fall back to ``GPTIMG_WEBHOOK_SECRET`` (comma separated)."""
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
    return secrets


def sign(body: bytes, secret: str) -> str:
    """Return the ``X-Gptimg-Signature`` value the provider would send for ``body``."""
    return Secret(secret).digest(body)


def verify(body: bytes, signature: str | None, secret: str | Sequence[str]) -> Match | None:
    """Check ``signature`` against ``body`` for one or several secrets; None on mismatch."""
    values = [secret] if isinstance(secret, str) else secret
    return Verifier(values).verify(body, signature)
