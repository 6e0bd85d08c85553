"""Typed events: snake_case attributes, the wire's camelCase names as aliases.

Forward compatible on purpose: unknown fields are kept, ``type`` and ``status`` are open
strings, and an unknown event name becomes an :class:`UnknownEvent`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidPayload

__all__ = [
    "EVENT_TYPES",
    "Event",
    "Generation",
    "GenerationFailed",
    "GenerationSucceeded",
    "Output",
    "UnknownEvent",
    "parse_event",
]


def _aware(value: datetime) -> datetime:
    # The provider sends "...Z"; read a timestamp without an offset as UTC, never as local.
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


#: A timezone-aware datetime; one without an offset is taken as UTC.
UtcDatetime = Annotated[datetime, AfterValidator(_aware)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)


class Output(_Model):
    """One image of a generation; the URLs are public, immutable and CDN-cached."""

    png: str | None = None
    webp: str | None = None
    width: int | None = None
    height: int | None = None


class Generation(_Model):
    """The generation object: ``data`` of an event, or ``GET /api/v1/generations/:id``.

    The webhook names the id ``generationId``, the API ``id``; either is read, and it is
    written back as ``generationId``.
    """

    generation_id: str = Field(
        alias="generationId", validation_alias=AliasChoices("generationId", "id")
    )
    type: str | None = None  # text2img | edit | upscale | ... (open set)
    status: str | None = None  # queued | running | succeeded | failed | blocked
    outputs: list[Output] = Field(default_factory=list)
    error: str | None = None
    cost_credits: float | None = Field(default=None, alias="costCredits")
    created_at: UtcDatetime | None = Field(default=None, alias="createdAt")
    completed_at: UtcDatetime | None = Field(default=None, alias="completedAt")


class _Envelope(_Model):
    @property
    def timestamp(self) -> datetime | None:
        """Return the signed time the event happened, if the body carries one."""
        data = getattr(self, "data", None)
        if isinstance(data, Generation):
            return data.completed_at or data.created_at
        return None


class GenerationSucceeded(_Envelope):
    """``generation.succeeded``: ``data.outputs`` holds the images."""

    event: Literal["generation.succeeded"] = "generation.succeeded"
    data: Generation


class GenerationFailed(_Envelope):
    """``generation.failed``: ``data.error`` says why (credits are refunded)."""

    event: Literal["generation.failed"] = "generation.failed"
    data: Generation


class UnknownEvent(_Envelope):
    """An event this version of the library does not know yet; reaches catch-all handlers."""

    event: str
    data: Any = None


Event: TypeAlias = GenerationSucceeded | GenerationFailed | UnknownEvent

_MODELS: dict[str, type[GenerationSucceeded] | type[GenerationFailed]] = {
    "generation.succeeded": GenerationSucceeded,
    "generation.failed": GenerationFailed,
}
EVENT_TYPES: frozenset[str] = frozenset(_MODELS)


def parse_event(payload: Any) -> Event:
    """Validate a decoded body into its typed event, or raise :class:`InvalidPayload`."""
    if not isinstance(payload, dict):
        raise InvalidPayload("body is not a JSON object")
    name = payload.get("event")
    if not isinstance(name, str) or not name:
        raise InvalidPayload("body has no 'event' name")
    model = _MODELS.get(name, UnknownEvent)
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        # Field paths and pydantic's wording only: never the offending value itself.
        raise InvalidPayload(f"{where}: {first['msg']}") from None
