"""Typed events: snake_case attributes, the wire's camelCase names as aliases.

Forward compatible on purpose: unknown fields are kept, ``type`` and ``status`` are open
strings, and an unknown event name becomes an :class:`UnknownEvent`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from . import strictjson
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
    "parse_event_json",
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
# Every model a parsed event can hold (Any fields hold plain dicts and lists).
_MODEL_TYPES = frozenset({GenerationSucceeded, GenerationFailed, UnknownEvent, Generation, Output})


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


class _Doubt(Exception):
    """The one-pass parse cannot vouch for this body: parse it the strict way."""


def _keys(node: Any, depth: int) -> int:
    """Count the keys under ``node`` (a model, dict or list at ``depth``); raise _Doubt."""
    if depth > strictjson.MAX_DEPTH:
        raise _Doubt
    kind = type(node)
    children: Any
    if kind in _MODEL_TYPES:
        count = len(node.__pydantic_fields_set__)  # extra keys included
        extra = node.__pydantic_extra__
        children = (
            node.__dict__.values() if not extra else [*node.__dict__.values(), *extra.values()]
        )
    elif kind is dict:
        count = len(node)
        children = node.values()
    else:
        count = 0
        children = node
    bound = strictjson.NUMBER_BOUND
    for child in children:
        kind = type(child)
        if kind is int or kind is float:
            # Over-long integers and overflowing floats (also where a float field took
            # an integer): strictjson refuses them, so let it.
            if not -bound < child < bound:
                raise _Doubt
        elif kind is list or kind is dict or kind in _MODEL_TYPES:
            count += _keys(child, depth + 1)
    return count


def _event_keys(event: Event) -> int:
    """:func:`_keys` of a parsed event, straight for a known event without extra fields.

    Such an event holds models and scalars only, at most 4 levels deep; its numbers
    are the outputs' sizes and the cost. Anything else takes the generic walk.
    """
    data = getattr(event, "data", None)
    if type(data) is not Generation or event.__pydantic_extra__ or data.__pydantic_extra__:
        return _keys(event, 1)
    count = len(event.__pydantic_fields_set__) + len(data.__pydantic_fields_set__)
    bound = strictjson.NUMBER_BOUND
    cost = data.cost_credits
    if cost is not None and not -bound < cost < bound:
        raise _Doubt
    for output in data.outputs:
        if output.__pydantic_extra__:
            return _keys(event, 1)
        count += len(output.__pydantic_fields_set__)
        width, height = output.width, output.height
        if (width is not None and not -bound < width < bound) or (
            height is not None and not -bound < height < bound
        ):
            raise _Doubt
    return count


def parse_event_json(body: bytes, name: str) -> Event:
    """Parse ``body`` for a delivery announced as ``name``: :func:`parse_event` of strict JSON.

    One pass straight into the typed model when the body is :func:`strictjson.plain` and
    the model kept every key the body has (no duplicate was dropped), the body's own
    ``event`` is ``name``, nesting is within bounds and every float is finite; otherwise
    (or on any validation error) the strict two-pass path decides, so the outcome and the
    errors are the same either way.
    """
    if strictjson.plain(body):
        model = _MODELS.get(name, UnknownEvent)
        try:
            event = model.model_validate_json(body)
            if (
                event.event == name
                and "event" in event.__pydantic_fields_set__
                and _event_keys(event) == strictjson.key_count(body)
            ):
                return event
        except (ValidationError, _Doubt):
            pass
    return parse_event(strictjson.loads(body))
