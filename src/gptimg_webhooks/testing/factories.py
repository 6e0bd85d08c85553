"""Event factories: realistic deliveries as the provider sends them, typed and on the wire.

::

    from gptimg_webhooks.testing import events

    sample = events.succeeded(generation_id="gen_cat", width=1536)
    sample.event.data.outputs[0].width   # 1536 (the typed model)
    sample.body                           # the exact bytes the provider would sign

Every call makes a fresh generation id unless one is given, and a fresh ``createdAt``
(millisecond precision, never the same twice in a process), so two samples are two
distinct deliveries even with the same generation id (the ledger deduplicates on the
body).
"""

from __future__ import annotations

import json
import secrets
import string
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Generic, TypeVar

from gptimg_webhooks._core.events import (
    Event,
    GenerationFailed,
    GenerationSucceeded,
    UnknownEvent,
    parse_event,
)

__all__ = ["EventFactory", "Sample", "events", "wire_json"]

E = TypeVar("E", bound=Event)

CDN = "https://cdn.gptimage2.plus/o"
_ALPHABET = string.ascii_letters + string.digits
_UNSET: Any = object()


def wire_json(payload: Any) -> bytes:
    """Serialise like the provider (``JSON.stringify``): compact, UTF-8, no escaping."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


_created_lock = threading.Lock()
_last_created_ms = 0


def _fresh_created() -> datetime:
    """Return a creation time 5 s ago, in whole milliseconds, later than any before it.

    The wire carries milliseconds; a clock read alone repeats within one, and two
    samples with the same generation id would then be byte-identical: one delivery.
    """
    global _last_created_ms  # noqa: PLW0603 - one monotonic sequence per process
    with _created_lock:
        ms = max(time.time_ns() // 1_000_000 - 5000, _last_created_ms + 1)
        _last_created_ms = ms
    # Whole seconds plus exact milliseconds: a float division could round down a millisecond.
    return datetime.fromtimestamp(ms // 1000, tz=timezone.utc) + timedelta(milliseconds=ms % 1000)


def _stamp(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    value = value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class Sample(Generic[E]):
    """One event as a typed model and as the exact wire body."""

    event: E
    body: bytes

    @property
    def name(self) -> str:
        """Return the event name (``generation.succeeded``, ...)."""
        return self.event.event

    @property
    def payload(self) -> Any:
        """Return the decoded body."""
        return json.loads(self.body)

    @property
    def generation_id(self) -> str | None:
        """Return ``data.generationId`` when the event has one."""
        return getattr(getattr(self.event, "data", None), "generation_id", None)


class EventFactory:
    """Build samples of every event type with realistic defaults and keyword overrides."""

    def generation_id(self, prefix: str = "gen_") -> str:
        """Return a fresh id shaped like the provider's (``gen_`` + 10 characters)."""
        return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(10))

    def generation(
        self,
        *,
        generation_id: str | None = None,
        status: str = "succeeded",
        type: str = "text2img",
        outputs: list[dict[str, Any]] | None = _UNSET,
        n: int = 1,
        width: int = 1024,
        height: int = 1024,
        error: str | None = _UNSET,
        cost_credits: float | None = _UNSET,
        created_at: datetime | str | None = None,
        completed_at: datetime | str | None = _UNSET,
        **extra: Any,
    ) -> dict[str, Any]:
        """Return a generation object as the wire carries it (camelCase keys)."""
        gid = generation_id or self.generation_id()
        created = created_at or _fresh_created()
        data: dict[str, Any] = {"generationId": gid, "type": type, "status": status}
        if outputs is _UNSET:
            outputs = (
                [
                    {
                        "png": f"{CDN}/{gid}/{i}.png",
                        "webp": f"{CDN}/{gid}/{i}.webp",
                        "width": width,
                        "height": height,
                    }
                    for i in range(n)
                ]
                if status == "succeeded"
                else []
            )
        data["outputs"] = outputs
        if error is not _UNSET:
            data["error"] = error
        if cost_credits is not _UNSET:
            data["costCredits"] = cost_credits
        data["createdAt"] = _stamp(created)
        if completed_at is _UNSET:
            start = created if isinstance(created, datetime) else datetime.now(timezone.utc)
            completed_at = start + timedelta(seconds=5)
        if completed_at is not None:
            data["completedAt"] = _stamp(completed_at)
        data.update(extra)
        return data

    def succeeded(self, **overrides: Any) -> Sample[GenerationSucceeded]:
        """Return a ``generation.succeeded`` sample; keywords override generation fields.

        Keywords: ``generation_id``, ``type``, ``outputs`` (list of wire dicts), ``n``,
        ``width``, ``height``, ``error``, ``cost_credits``, ``created_at``,
        ``completed_at`` (datetime or ISO string; None drops it), or any extra wire field.
        """
        overrides.setdefault("status", "succeeded")
        sample = self.build("generation.succeeded", self.generation(**overrides))
        assert isinstance(sample.event, GenerationSucceeded)
        return sample  # type: ignore[return-value]

    def failed(self, **overrides: Any) -> Sample[GenerationFailed]:
        """Return a ``generation.failed`` sample (refunded credits, an error message)."""
        overrides.setdefault("status", "failed")
        overrides.setdefault("error", "content policy: the prompt was refused")
        overrides.setdefault("cost_credits", 0)
        sample = self.build("generation.failed", self.generation(**overrides))
        assert isinstance(sample.event, GenerationFailed)
        return sample  # type: ignore[return-value]

    def unknown(
        self, name: str = "generation.queued", data: Any = _UNSET, **overrides: Any
    ) -> Sample[UnknownEvent]:
        """Return an event this library does not know (reaches catch-all handlers only)."""
        if data is _UNSET:
            overrides.setdefault("status", "queued")
            overrides.setdefault("outputs", [])
            overrides.setdefault("completed_at", None)
            data = self.generation(**overrides)
        sample = self.build(name, data)
        if not isinstance(sample.event, UnknownEvent):
            raise ValueError(f"{name!r} is a known event: use succeeded() or failed()")
        return sample  # type: ignore[return-value]

    def build(self, name: str, data: Any, **extra: Any) -> Sample[Event]:
        """Return a sample of any event name with ``data`` as given (extra envelope keys too)."""
        body = wire_json({"event": name, "data": data, **extra})
        return Sample(parse_event(json.loads(body)), body)


#: A ready factory: ``events.succeeded()``, ``events.failed()``, ``events.unknown()``.
events = EventFactory()
