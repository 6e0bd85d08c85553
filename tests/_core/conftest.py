from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from gptimg_webhooks import Webhooks
from gptimg_webhooks.stores.memory import MemoryStore
from tests.support.contract import headers, payload

SECRET = "whsec_9f2c4e1ab7d84c0e93a1b5d6f7e8c2a1"
VECTOR_BODY = (
    b'{"event":"generation.succeeded","data":{"generationId":"gen_7Qk2xN4pR8","type":"text2img",'
    b'"status":"succeeded","outputs":[{"png":"https://cdn.gptimage2.plus/o/gen_7Qk2xN4pR8/0.png",'
    b'"webp":"https://cdn.gptimage2.plus/o/gen_7Qk2xN4pR8/0.webp","width":1024,"height":1536}],'
    b'"createdAt":"2026-04-26T01:23:45.000Z","completedAt":"2026-04-26T01:23:50.000Z"}}'
)
VECTOR_SIGNATURE = "17cce00d1688c6c755d4c82c035a07e48b4e651826ae7c70da82cc226da40f4d"


class Clock:
    """A clock tests move by hand."""

    def __init__(self, now: float = 1_777_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> MemoryStore:
    return MemoryStore(clock=clock)  # the store's clock decides leases


@pytest.fixture
def hooks(store: MemoryStore, clock: Clock) -> Webhooks:
    return Webhooks(SECRET, store=store, clock=clock, include_shared=False)


Send = Callable[..., tuple[int, dict[str, object]]]


def request(
    body: bytes,
    *,
    secret: str = SECRET,
    event: str = "generation.succeeded",
    delivery: str | None = None,
    **extra: str,
) -> dict[str, str]:
    """Return the headers the provider would send for ``body``."""
    return {**headers(body, secret, event, delivery), **extra}


@pytest.fixture
def body() -> bytes:
    return payload(f"gen_{uuid.uuid4().hex[:10]}")
