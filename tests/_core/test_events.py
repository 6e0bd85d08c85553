from __future__ import annotations

import json

import pytest

from gptimg_webhooks import (
    GenerationFailed,
    GenerationSucceeded,
    InvalidPayload,
    UnknownEvent,
    parse_event,
)

from .conftest import VECTOR_BODY


def test_succeeded_event_has_snake_case_fields_and_aware_datetimes() -> None:
    event = parse_event(json.loads(VECTOR_BODY))
    assert isinstance(event, GenerationSucceeded)
    data = event.data
    assert data.generation_id == "gen_7Qk2xN4pR8"
    assert data.outputs[0].height == 1536
    assert data.created_at is not None and data.created_at.tzinfo is not None
    assert data.completed_at is not None and data.completed_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert event.timestamp == data.completed_at


def test_wire_names_round_trip_through_aliases() -> None:
    event = parse_event(json.loads(VECTOR_BODY))
    dumped = event.model_dump(by_alias=True, mode="json")
    assert dumped["data"]["generationId"] == "gen_7Qk2xN4pR8"
    assert "generation_id" not in dumped["data"]


def test_timestamp_without_offset_is_read_as_utc() -> None:
    event = parse_event(
        {
            "event": "generation.succeeded",
            "data": {"generationId": "g", "createdAt": "2026-04-26T01:23:45"},
        }
    )
    assert isinstance(event, GenerationSucceeded)
    assert event.data.created_at is not None
    assert event.data.created_at.isoformat() == "2026-04-26T01:23:45+00:00"


def test_failed_event_carries_the_error() -> None:
    event = parse_event(
        {
            "event": "generation.failed",
            "data": {
                "generationId": "g",
                "status": "blocked",
                "error": "moderation",
                "costCredits": 0,
            },
        }
    )
    assert isinstance(event, GenerationFailed)
    assert event.data.status == "blocked"
    assert event.data.error == "moderation"
    assert event.data.cost_credits == 0


def test_new_type_and_unknown_fields_do_not_fail_a_valid_delivery() -> None:
    payload = json.loads(VECTOR_BODY)
    payload["data"]["type"] = "outpaint"
    payload["data"]["seed"] = 42
    payload["traceId"] = "t-1"
    event = parse_event(payload)
    assert isinstance(event, GenerationSucceeded)
    assert event.data.type == "outpaint"
    assert event.data.model_extra == {"seed": 42}


def test_unknown_event_name_parses_to_a_generic_event() -> None:
    event = parse_event({"event": "generation.cancelled", "data": {"anything": [1, 2]}})
    assert isinstance(event, UnknownEvent)
    assert event.event == "generation.cancelled"
    assert event.data == {"anything": [1, 2]}


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"data": {}},
        {"event": "", "data": {}},
        {"event": "generation.succeeded", "data": {}},
        {"event": "generation.succeeded", "data": {"generationId": "g", "createdAt": "soon"}},
        {"event": "generation.succeeded", "data": {"generationId": "g", "outputs": "x"}},
    ],
)
def test_invalid_known_event_is_invalid_payload(payload: object) -> None:
    with pytest.raises(InvalidPayload):
        parse_event(payload)


def test_generation_reads_the_apis_id_and_writes_generation_id() -> None:
    from gptimg_webhooks import Generation

    generation = Generation.model_validate({"id": "gen_api", "status": "queued"})
    assert generation.generation_id == "gen_api"
    assert generation.model_dump(by_alias=True)["generationId"] == "gen_api"
    both = Generation.model_validate({"generationId": "gen_hook", "id": "other"})
    assert both.generation_id == "gen_hook"
    assert both.model_extra == {"id": "other"}
