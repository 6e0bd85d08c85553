"""Ledger stores, one module per backend, chosen by URL scheme.

=======================================  ================  ====================
URL                                      module            shared across
=======================================  ================  ====================
``memory://?max_records=100000``         :mod:`.memory`    one process only
``sqlite:///relative/file.db``           :mod:`.sqlite`    processes, one host
``sqlite:////absolute/file.db``          :mod:`.sqlite`    processes, one host
``redis://host:6379/0?prefix=gptimg:``   :mod:`.redis`     hosts
``rediss://...`` (TLS)                   :mod:`.redis`     hosts
``postgresql://user@host/db?table=...``  :mod:`.postgres`  hosts; transactional
``postgres://...``                       :mod:`.postgres`  hosts; transactional
=======================================  ================  ====================

A backend's driver is imported only when its URL is opened, so the core needs none.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from .._core.errors import ConfigurationError
from .._core.ledger import Claim, ClaimStatus, Entry, Record, State, Store, set_opener

__all__ = [
    "Claim",
    "ClaimStatus",
    "Entry",
    "Record",
    "State",
    "Store",
    "open_store",
    "register_scheme",
]

_SCHEMES: dict[str, str] = {
    "memory": "gptimg_webhooks.stores.memory:MemoryStore",
    "sqlite": "gptimg_webhooks.stores.sqlite:SQLiteStore",
    "redis": "gptimg_webhooks.stores.redis:RedisStore",
    "rediss": "gptimg_webhooks.stores.redis:RedisStore",
    "postgresql": "gptimg_webhooks.stores.postgres:PostgresStore",
    "postgres": "gptimg_webhooks.stores.postgres:PostgresStore",
}

#: Schemes whose extra is named differently.
_EXTRAS = {"rediss": "redis", "postgresql": "postgres"}


def register_scheme(scheme: str, target: str) -> None:
    """Map a URL scheme to ``"package.module:StoreClass"`` (imported on first use)."""
    _SCHEMES[scheme] = target


def open_store(url: str, *, create: bool = True) -> Store:
    """Open the store a URL names; the class's ``from_url`` parses the rest.

    With ``create=False`` (read-only tools) a store never creates files, folders or
    tables: a ledger that does not exist yet is :class:`StoreUnavailable`.
    """
    scheme = urlsplit(url).scheme
    target = _SCHEMES.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(_SCHEMES))
        raise ConfigurationError(f"unknown store URL scheme in {url!r} (known: {known})")
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"the {scheme}:// store needs an extra: "
            f"pip install 'gptimg-webhooks[{_EXTRAS.get(scheme, scheme)}]' ({exc})"
        ) from exc
    cls = getattr(module, cls_name)
    try:
        store: Store = cls.from_url(url, create=create)
    except ValueError as exc:
        if isinstance(exc, ConfigurationError):
            raise
        raise ConfigurationError(f"bad {scheme}:// store URL: {exc}") from exc
    return store


set_opener(open_store)
