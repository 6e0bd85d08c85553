"""An installed app's ``webhooks.py``: imported by the app's autodiscovery."""

from __future__ import annotations

from gptimg_webhooks import Event, on


@on("generation.failed")
def discovered(event: Event) -> None:
    """Do nothing; the test only checks that this registered."""
