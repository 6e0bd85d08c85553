"""System checks: ``manage.py check`` fails, naming the setting, when the receiver cannot work."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error

from .._core.errors import ConfigurationError
from .._core.receiver import Webhooks
from .._core.signature import SECRET_ENV, parse_secrets
from ..stores import open_store
from ..stores.memory import MemoryStore
from .conf import OPTIONS, SETTING, name, options

__all__ = ["check_settings"]


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
    try:
        open_store(str(opts["STORE"]))
    except (ConfigurationError, ValueError) as exc:
        errors.append(
            Error(
                f"{name('STORE')} = {opts['STORE']!r} is not a usable ledger store: {exc}",
                hint="Use 'django://' (the ORM ledger, after manage.py migrate), "
                "'django://<database alias>', 'sqlite:///path/file.db', or another store URL.",
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
