"""The reference pages say what the code does: example bodies parse, every cause is listed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gptimg_webhooks import (
    Generation,
    GenerationFailed,
    GenerationSucceeded,
    Output,
    UnknownEvent,
    parse_event,
)
from gptimg_webhooks.cli import _diagnose

DOCS = Path(__file__).resolve().parents[2] / "docs"
JSON_BLOCK = re.compile(r"^```json\n(.*?)^```", re.M | re.S)


def _bodies() -> list[dict[str, object]]:
    return [json.loads(block) for block in JSON_BLOCK.findall((DOCS / "events.md").read_text())]


def test_event_page_has_a_full_body_per_event() -> None:
    names = [body["event"] for body in _bodies()]
    assert names[:2] == ["generation.succeeded", "generation.failed"]
    assert len(names) == 3  # and one unknown event


@pytest.mark.parametrize(
    ("index", "model"), [(0, GenerationSucceeded), (1, GenerationFailed), (2, UnknownEvent)]
)
def test_event_page_bodies_parse_to_their_typed_event(index: int, model: type) -> None:
    event = parse_event(_bodies()[index])
    assert type(event) is model
    data = getattr(event, "data", None)
    if isinstance(data, Generation):
        assert not data.model_extra  # every example field is a documented attribute


def test_event_page_lists_every_wire_field_of_the_models() -> None:
    page = (DOCS / "events.md").read_text()
    for model, prefix in ((Generation, "data."), (Output, "data.outputs[].")):
        for name, field in model.model_fields.items():
            wire = field.alias or name
            if model is Output and wire in ("width", "height"):
                assert "`data.outputs[].width`, `.height`" in page
                continue
            assert f"`{prefix}{wire}`" in page, wire


def test_troubleshooting_page_names_every_cause_verify_gives() -> None:
    source = Path(_diagnose.__file__).read_text()
    codes = set(re.findall(r'Finding\(\s*"(\w+)"', source)) | set(_diagnose._EXPLAIN)
    assert len(codes) > 10  # the pattern still finds the findings
    page = (DOCS / "troubleshooting.md").read_text()
    missing = sorted(code for code in codes if f"`{code}`" not in page)
    assert not missing, f"docs/troubleshooting.md does not explain: {missing}"
