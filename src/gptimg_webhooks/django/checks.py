"""System checks: ``manage.py check`` fails, naming the setting, when the receiver cannot work."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from django.core.checks import CheckMessage, Error

from .._core.errors import ConfigurationError
from .._core.ledger import Store
from .._core.receiver import Webhooks
from .._core.signature import SECRET_ENV, parse_secrets
from ..stores import mask_url, open_store
from ..stores.memory import MemoryStore
from .conf import OPTIONS, SETTING, name, options

__all__ = ["check_settings"]

#: How long the check waits for the store to answer one read. The network stores give
#: up on their own before this (Redis 1 s, PostgreSQL 1.5-2 s by default).
PROBE_TIMEOUT = 2.5


def _probe(store: Store) -> str | None:
    """Read one (absent) record within :data:`PROBE_TIMEOUT`; return why it failed, or None."""
    failure: list[str] = []

    def read() -> None:
        try:
            store.get("0" * 64)
        except Exception as exc:
            failure.append(f"{type(exc).__name__}: {exc}")
        finally:
            # Closing is best effort: the read already said what matters.
            with contextlib.suppress(Exception):
                store.close()

    # A thread, so a store that hangs past its own timeouts cannot hang manage.py check.
    thread = threading.Thread(target=read, name="gptimg-webhooks-check", daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT)
    if thread.is_alive():
        return f"no answer within {PROBE_TIMEOUT:g} s"
    return failure[0] if failure else None


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Check ``GPTIMG_WEBHOOKS``: the secret, the store, then every other option."""
    try:
        opts = options()
    except ConfigurationError as exc:
        return [Error(str(exc), id="gptimg_webhooks.E000")]
    errors: list[CheckMessage] = []
    secret = opts.get("SECRET")
    if "SECRET" in opts and (secret is None or (isinstance(secret, str) and not secret.strip())):
        errors.append(
            Error(
                f"{name('SECRET')} is blank: deliveries could not be verified.",
                hint="Set it to the whsec_... secret the provider showed when you created the "
                "webhook (a list for rotation), e.g. os.environ['GPTIMG_WEBHOOK_SECRET'].",
                id="gptimg_webhooks.E001",
            )
        )
    else:
        try:
            parse_secrets(secret)
        except ConfigurationError as exc:
            missing = "SECRET" not in opts
            errors.append(
                Error(
                    f"{name('SECRET')} is missing and {SECRET_ENV} is not set."
                    if missing
                    else f"{name('SECRET')} is invalid: {exc}",
                    hint="Set it to the whsec_... secret the provider showed when you created "
                    "the webhook (a list for rotation).",
                    id="gptimg_webhooks.E001",
                )
            )
    url = opts["STORE"]
    shown = mask_url(url) if isinstance(url, str) else url
    try:
        store = url if isinstance(url, Store) else open_store(str(url))
    except (ConfigurationError, ValueError) as exc:
        errors.append(
            Error(
                f"{name('STORE')} = {shown!r} is not a usable ledger store: {exc}",
                hint="Use 'django://' (the ORM ledger, after manage.py migrate), "
                "'django://<database alias>', 'sqlite:///path/file.db', or another store URL.",
                id="gptimg_webhooks.E002",
            )
        )
    else:
        # The ORM ledger's database is Django's own (migrate would fail on a probe that
        # needs its table); every other store is tried for real.
        failed = None if store.schemes == ("django",) or store is url else _probe(store)
        if failed is not None:
            errors.append(
                Error(
                    f"{name('STORE')} = {shown!r} cannot be reached: {failed}",
                    hint="Start the store or fix its URL (host, port, credentials); until "
                    "then every delivery would be answered 503.",
                    id="gptimg_webhooks.E002",
                )
            )
    for key, value in opts.items():
        if key in ("SECRET", "STORE"):
            continue
        try:
            # A dispatcher is checked with the mode it needs (MODE is checked on its own).
            needs = {"mode": opts.get("MODE", "deferred")} if key == "DISPATCHER" else {}
            Webhooks("whsec_check", store=MemoryStore(), **needs, **{OPTIONS[key]: value})
        except (ConfigurationError, TypeError, ValueError) as exc:
            errors.append(Error(f"{name(key)} is invalid: {exc}", id="gptimg_webhooks.E003"))
    return errors


__all__ += ["SETTING"]
