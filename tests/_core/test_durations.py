from __future__ import annotations

import pytest

from gptimg_webhooks import ConfigurationError
from gptimg_webhooks._core.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("45s", 45), ("90m", 5400), ("12h", 43200), ("30d", 2592000), ("2w", 1209600)],
)
def test_units_are_read(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "seconds"), [("0", 0), ("7", 604800), ("1.5", 129600)])
def test_a_plain_number_is_days(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "30 days", "-1d", "1y", "1e400d"])
def test_anything_else_is_refused_with_the_syntax(text: str) -> None:
    with pytest.raises(ConfigurationError, match="30d"):
        parse_duration(text)
