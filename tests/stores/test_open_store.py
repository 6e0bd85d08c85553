"""``open_store``: every bad URL is a ConfigurationError naming it, password masked."""

from __future__ import annotations

import pytest

from gptimg_webhooks import ConfigurationError
from gptimg_webhooks.stores import mask_url, open_store


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("memory://?max_records=abc", "invalid store URL 'memory://?max_records=abc'"),
        ("redis://127.0.0.1:notaport/0", "'redis://127.0.0.1:notaport/0'"),
        ("redis://app:hunter2@127.0.0.1:notaport/0", "'redis://app:***@127.0.0.1:notaport/0'"),
        ("postgresql://app:hunter2@127.0.0.1/db?pool_max=x", "postgresql://app:***@127.0.0.1"),
        ("mysql://app:hunter2@db/x", "unknown store URL scheme in 'mysql://app:***@db/x'"),
    ],
)
def test_a_malformed_url_is_a_configuration_error_naming_it_masked(url: str, said: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_store(url)
    assert said in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_mask_url_hides_only_the_password() -> None:
    assert mask_url("redis://u:p@h:1/0?prefix=x") == "redis://u:***@h:1/0?prefix=x"
    assert mask_url("sqlite:///x.db") == "sqlite:///x.db"
    assert mask_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_django_scheme_without_settings_says_to_set_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from gptimg_webhooks import stores

    monkeypatch.delitem(stores._SCHEMES, "django", raising=False)
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    with pytest.raises(ConfigurationError, match="set DJANGO_SETTINGS_MODULE"):
        open_store("django://")
