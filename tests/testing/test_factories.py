from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from gptimg_webhooks import GenerationFailed, GenerationSucceeded, UnknownEvent
from gptimg_webhooks.testing import events


def test_succeeded_sample_is_typed_and_its_body_is_compact_wire_json() -> None:
    sample = events.succeeded(generation_id="gen_cat", n=2, width=1536)
    assert isinstance(sample.event, GenerationSucceeded)
    assert sample.event.data.generation_id == "gen_cat"
    assert [o.width for o in sample.event.data.outputs] == [1536, 1536]
    assert sample.body.startswith(
        b'{"event":"generation.succeeded","data":{"generationId":"gen_cat"'
    )
    assert b", " not in sample.body and b": " not in sample.body
    assert json.loads(sample.body)["data"]["outputs"][1]["png"].endswith("/gen_cat/1.png")


def test_failed_sample_carries_error_and_refund() -> None:
    sample = events.failed(error="blocked by moderation")
    assert isinstance(sample.event, GenerationFailed)
    assert sample.event.data.error == "blocked by moderation"
    assert sample.event.data.outputs == []
    assert sample.payload["data"]["costCredits"] == 0


def test_unknown_event_parses_to_the_generic_model() -> None:
    sample = events.unknown("generation.queued")
    assert isinstance(sample.event, UnknownEvent)
    assert sample.name == "generation.queued"
    with pytest.raises(ValueError, match="known event"):
        events.unknown("generation.succeeded")


def test_each_sample_is_a_distinct_delivery() -> None:
    assert events.succeeded().body != events.succeeded().body


def test_overrides_reach_the_wire_including_extra_fields_and_timestamps() -> None:
    when = datetime(2026, 4, 26, 1, 23, 45, tzinfo=timezone.utc)
    sample = events.succeeded(created_at=when, completed_at=None, type="upscale", seed=7)
    data = sample.payload["data"]
    assert data["createdAt"] == "2026-04-26T01:23:45.000Z"
    assert "completedAt" not in data
    assert data["type"] == "upscale" and data["seed"] == 7
    assert sample.event.data.created_at == when


def test_same_generation_id_still_makes_distinct_deliveries() -> None:
    bodies = {events.succeeded(generation_id="gen_cat", n=2).body for _ in range(500)}
    assert len(bodies) == 500
    stamps = [json.loads(b)["data"]["createdAt"] for b in bodies]
    assert all(len(s) == len("2026-04-26T01:23:45.000Z") and s.endswith("Z") for s in stamps)
