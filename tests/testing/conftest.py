from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gptimg_webhooks import Webhooks
from gptimg_webhooks.testing import Gallery, WebhookClient, random_secret
from gptimg_webhooks.testing.demo_app import create_app

# pytester runs the plugin in throwaway user projects. pytest only accepts
# `pytest_plugins` in conftests it loads before configuring, and it does load the
# `test*` folders under `testpaths` that early, so this one qualifies.
pytest_plugins = ["pytester"]


@pytest.fixture
def secret() -> str:
    return random_secret()


@pytest.fixture
def gallery(tmp_path: Path) -> Gallery:
    return Gallery(tmp_path)


@pytest.fixture
def gallery_app(secret: str, gallery: Gallery) -> Iterator[Any]:
    """The demo gallery (the Starlette example's app) on an in-memory ledger."""
    hooks = Webhooks(secret, store="memory://", include_shared=False)
    yield create_app(hooks, gallery)
    hooks.close()


@pytest.fixture
def client(gallery_app: Any, secret: str) -> Iterator[WebhookClient]:
    with WebhookClient(gallery_app, secret) as c:
        yield c
