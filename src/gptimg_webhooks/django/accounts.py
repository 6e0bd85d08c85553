"""Provider accounts kept in the database, edited in the admin: ``ACCOUNTS: "database"``.

A secret or API key is write-only: the admin never shows a saved one again.
"""

from __future__ import annotations

from .._core.accounts import Account
from .models import WebhookAccount

__all__ = ["resolve"]


def resolve(name: str) -> Account | None:
    """Return the enabled account ``name`` from the database, or None."""
    row = WebhookAccount.objects.filter(name=name, enabled=True).first()
    if row is None:
        return None
    return Account(row.name, row.secrets, api_key=row.api_key or None)
