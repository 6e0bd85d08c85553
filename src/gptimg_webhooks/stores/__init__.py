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
import os
from urllib.parse import urlsplit, urlunsplit

from .._core.errors import ConfigurationError
from .._core.ledger import Claim, ClaimStatus, Entry, Record, State, Store, set_opener

__all__ = [
    "Claim",
    "ClaimStatus",
    "Entry",
    "Record",
    "State",
    "Store",
    "mask_url",
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


def mask_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``, for messages and logs."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url.split("@", 1)[-1] if "@" in url else url
    if not password:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))


def _django_scheme() -> str:
    """Register ``django://`` outside a running Django project (the CLI); return its target.

    Inside a project the app config registers it at start-up. Elsewhere it needs
    ``DJANGO_SETTINGS_MODULE`` to set Django up first, or the ORM has no database.
    """
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        raise ConfigurationError(
            "the django:// store needs the Django project's settings: set "
            "DJANGO_SETTINGS_MODULE (e.g. DJANGO_SETTINGS_MODULE=mysite.settings, with the "
            "project on PYTHONPATH)"
        )
    try:
        # Imported by name: the stores package itself must not depend on Django.
        django = importlib.import_module("django")
        apps = importlib.import_module("django.apps").apps
    except ImportError as exc:
        raise ConfigurationError(
            f"the django:// store needs an extra: pip install 'gptimg-webhooks[django]' ({exc})"
        ) from exc
    if not apps.ready:
        try:
            django.setup()
        except Exception as exc:  # a broken settings module: say so in one line
            raise ConfigurationError(
                f"cannot set up Django with DJANGO_SETTINGS_MODULE="
                f"{os.environ['DJANGO_SETTINGS_MODULE']}: {type(exc).__name__}: {exc}"
            ) from exc
    target = "gptimg_webhooks.django.store:DjangoStore"
    register_scheme("django", target)
    return target


def open_store(url: str, *, create: bool = True) -> Store:
    """Open the store a URL names; the class's ``from_url`` parses the rest.

    A malformed URL (a port that is not a number, a bad option value) raises
    :class:`ConfigurationError` naming the URL, its password masked. With
    ``create=False`` (read-only tools) a store never creates files, folders or tables: a
    ledger that does not exist yet is :class:`StoreUnavailable`.
    """
    scheme = urlsplit(url).scheme
    target = _SCHEMES.get(scheme)
    if target is None and scheme == "django":
        target = _django_scheme()
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted({*_SCHEMES, "django"}))
        raise ConfigurationError(f"unknown store URL scheme in {mask_url(url)!r} (known: {known})")
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
    except ValueError as exc:  # ConfigurationError included: mask what it may echo
        masked = mask_url(url)
        text = _mask_in(str(exc), url, masked)
        if isinstance(exc, ConfigurationError):
            if text == str(exc):
                raise
            raise ConfigurationError(text) from None
        # Drivers and int() say "invalid literal..." without naming the URL at fault.
        raise ConfigurationError(f"invalid store URL {masked!r}: {text}") from exc
    return store


def _mask_in(text: str, url: str, masked: str) -> str:
    text = text.replace(url, masked)
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text


set_opener(open_store)
