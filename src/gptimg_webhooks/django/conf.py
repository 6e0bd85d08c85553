"""The one settings dict, ``GPTIMG_WEBHOOKS``, and the receiver built from it.

::

    GPTIMG_WEBHOOKS = {
        "SECRET": os.environ["GPTIMG_WEBHOOK_SECRET"],  # or a list, for rotation
        "STORE": "django://",                          # the ORM ledger (default)
    }

Every key is optional; see :data:`OPTIONS`. A missing ``SECRET`` falls back to the
``GPTIMG_WEBHOOK_SECRET`` environment variable, a missing ``STORE`` to
``GPTIMG_WEBHOOK_STORE``, then to ``django://``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS

from .._core.errors import ConfigurationError
from .._core.handlers import HandlerSpec
from .._core.receiver import STORE_ENV, Webhooks
from . import signals

__all__ = ["OPTIONS", "SETTING", "DjangoWebhooks", "options", "receiver"]

SETTING = "GPTIMG_WEBHOOKS"
DEFAULT_STORE = "django://"
#: Settings keys and the :class:`~gptimg_webhooks.Webhooks` arguments they feed.
OPTIONS = {
    "SECRET": "secret",
    "STORE": "store",
    "PATH": "path",
    "MAX_BODY_SIZE": "max_body_size",
    "LEASE": "lease",
    "RETENTION": "retention",
    "MAX_EVENT_AGE": "max_event_age",
    "CLOCK_SKEW": "clock_skew",
    "FAILURE_THRESHOLD": "failure_threshold",
    "MODE": "mode",
    "ACCOUNTS": "accounts",
}


def name(key: str) -> str:
    """Spell a key the way users write it in settings.py."""
    return f'{SETTING}["{key}"]'


def options() -> dict[str, Any]:
    """Return ``GPTIMG_WEBHOOKS`` checked for shape, with the store default filled in."""
    raw = getattr(settings, SETTING, {})
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"{SETTING} must be a dict, not {type(raw).__name__}")
    unknown = sorted(set(raw) - set(OPTIONS))
    if unknown:
        known = ", ".join(OPTIONS)
        raise ConfigurationError(f"{SETTING} has unknown key(s) {unknown} (known: {known})")
    found = dict(raw)
    found.setdefault("STORE", os.environ.get(STORE_ENV) or DEFAULT_STORE)
    return found


def accounts_from(value: Any) -> Any:
    """Read ``GPTIMG_WEBHOOKS["ACCOUNTS"]``: a list of dicts, ``"database"``, or a resolver.

    ``"database"`` serves the accounts of the admin's *Webhook accounts* table; a dotted
    path (or a callable) names a resolver ``name -> Account | None`` of your own.
    """
    from .._core.accounts import Account

    if value == "database":
        from .accounts import resolve

        return resolve
    if isinstance(value, str):
        from django.utils.module_loading import import_string

        try:
            return import_string(value)
        except ImportError as exc:
            raise ConfigurationError(f"{name('ACCOUNTS')}: cannot import {value!r}") from exc
    if callable(value):
        return value
    if not isinstance(value, list | tuple):
        raise ConfigurationError(f'{name("ACCOUNTS")} must be a list, "database" or a resolver')
    found = []
    for item in value:
        if isinstance(item, Account):
            found.append(item)
        elif isinstance(item, Mapping):
            fields = {str(k).lower(): v for k, v in item.items()}
            fields["secrets"] = fields.pop("secret", fields.get("secrets"))
            try:
                found.append(Account(**fields))
            except TypeError as exc:
                raise ConfigurationError(f"{name('ACCOUNTS')}: {exc}") from exc
        else:
            raise ConfigurationError(f"{name('ACCOUNTS')} items are dicts or Account objects")
    return found


def store_alias(store: object) -> str:
    return str(getattr(store, "alias", DEFAULT_DB_ALIAS))


class DjangoWebhooks(Webhooks):
    """A receiver that also sends this app's Django signals."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._processed = signals.processed_spec(store_alias(self.store))
        self.on_error(signals.send_failed)

    def routes(self, name: str) -> tuple[HandlerSpec, ...]:
        handlers = super().routes(name)
        if signals.delivery_received.has_listeners():
            handlers = (signals.RECEIVED, *handlers)
        if signals.delivery_processed.has_listeners():
            handlers = (*handlers, self._processed)
        return handlers


_lock = threading.Lock()
_receiver: Webhooks | None = None


def receiver() -> Webhooks:
    """Return the receiver built from settings (once per process, on first use)."""
    global _receiver  # noqa: PLW0603 - one receiver per process, like the app registry
    if _receiver is None:
        with _lock:
            if _receiver is None:
                opts = options()
                if "ACCOUNTS" in opts:
                    opts["ACCOUNTS"] = accounts_from(opts["ACCOUNTS"])
                _receiver = DjangoWebhooks(**{OPTIONS[k]: v for k, v in opts.items()})
    return _receiver


def reset(**kwargs: Any) -> None:
    """Forget the receiver so the next request builds it from the new settings."""
    global _receiver
    if kwargs.get("setting") not in (None, SETTING, "DATABASES"):
        return
    with _lock:
        old, _receiver = _receiver, None
    if old is not None:
        old.close()


setting_changed.connect(reset, dispatch_uid="gptimg_webhooks.django.conf.reset")
