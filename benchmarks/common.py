"""What every part of the suite shares: the secret, the bodies, signing and statistics."""

from __future__ import annotations

import hashlib
import hmac
import statistics
import uuid
from collections.abc import Sequence

SECRET = "whsec_9f2c4e1ab7d84c0e93a1b5d6f7e8c2a1"
KEY = SECRET.encode()
EVENT = "generation.succeeded"
# The provider's generation.succeeded body: 345 bytes with a 1-digit id.
TEMPLATE = (
    '{"event":"generation.succeeded","data":{"generationId":"gen_%s","type":"text2img",'
    '"status":"succeeded","outputs":[{"png":"https://cdn.gptimage2.plus/o/g/0.png",'
    '"webp":"https://cdn.gptimage2.plus/o/g/0.webp","width":1024,"height":1536}],'
    '"createdAt":"2026-04-26T01:23:45.000Z","completedAt":"2026-04-26T01:23:50.000Z"}}'
)
_OUTPUT = (
    '{"png":"https://cdn.gptimage2.plus/o/g/%d.png",'
    '"webp":"https://cdn.gptimage2.plus/o/g/%d.webp","width":1024,"height":1536}'
)


def body(tag: object, size: int = 0) -> bytes:
    """Return a unique ``generation.succeeded`` body, padded with outputs to about ``size``."""
    # A 30-character id, as the provider's, makes the 345-byte body.
    text = TEMPLATE % f"{tag!s:0>30}"
    if size > len(text):
        one = len(_OUTPUT % (size // 110, size // 110)) + 1
        count = max(1, (size - len(text)) // one + 1)
        outputs = ",".join(_OUTPUT % (i, i) for i in range(count))
        text = text.replace(
            text[text.index('"outputs":[') : text.index("],") + 1], f'"outputs":[{outputs}]'
        )
    return text.encode()


def signature(payload: bytes) -> str:
    """Return the provider's ``X-Gptimg-Signature`` for ``payload``."""
    return hmac.new(KEY, payload, hashlib.sha256).hexdigest()


def headers(payload: bytes) -> list[tuple[bytes, bytes]]:
    """Return an ASGI-style header list for a signed delivery of ``payload``."""
    return [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"x-gptimg-signature", signature(payload).encode()),
        (b"x-gptimg-delivery", str(uuid.uuid4()).encode()),
        (b"x-gptimg-event", EVENT.encode()),
    ]


def http_request(payload: bytes, path: str = "/hooks/gptimg") -> bytes:
    """Return one raw HTTP/1.1 keep-alive request carrying a signed delivery."""
    lines = [f"POST {path} HTTP/1.1"]
    lines += [f"{k.decode()}: {v.decode()}" for k, v in headers(payload)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def summary(samples: Sequence[float]) -> dict[str, float]:
    """Median and spread of repeated samples (the median is the figure quoted)."""
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "q1": q[0],
        "q3": q[2],
        "n": len(ordered),
    }


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Median of the round-by-round ratios a/b (pairing cancels the machine's drift)."""
    return summary([x / y for x, y in zip(a, b, strict=True) if y])
