"""What every command shares: exit codes, secrets from the environment, output."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console

from gptimg_webhooks._core.errors import ConfigurationError, StoreUnavailable, WebhookError

if TYPE_CHECKING:
    from gptimg_webhooks._core.ledger import Store
    from gptimg_webhooks._core.receiver import Webhooks

__all__ = [
    "EXIT_DISABLED",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "SECRET_ENV",
    "ConfigProblem",
    "Unavailable",
    "console",
    "err_console",
    "exit_for",
    "json_option",
    "load_receiver",
    "one_line_logs",
    "open_readonly",
    "open_writable",
    "print_json",
    "raw_secrets",
    "secret_env_option",
    "secrets_from_env",
]

#: Success: the signature is valid, the delivery was delivered, the operation happened.
EXIT_OK = 0
#: The check or the delivery failed: invalid signature, not delivered, a handler failed.
EXIT_FAILED = 1
#: Usage: bad option or argument, no secret in the environment (click's own code).
EXIT_USAGE = 2
#: ``send``: the simulated endpoint was auto-disabled (8 consecutive failures).
EXIT_DISABLED = 3
#: Something needed is not there: the store, a port, the app to import, a server.
EXIT_UNAVAILABLE = 4

SECRET_ENV = "GPTIMG_WEBHOOK_SECRET"  # noqa: S105 - a variable name

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


def secret_env_option(multiple: bool = False) -> Callable[[F], F]:
    """Add ``--secret-env NAME``: the environment variable holding the secret(s)."""
    return click.option(
        "--secret-env",
        "secret_env",
        multiple=multiple,
        default=(SECRET_ENV,) if multiple else SECRET_ENV,
        show_default=True,
        metavar="NAME",
        help="Environment variable holding the whsec_... secret (several comma-separated). "
        "Secrets are never taken on the command line."
        + (" Repeat to try several variables." if multiple else ""),
    )


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(func)


def raw_secrets(names: str | tuple[str, ...]) -> list[str]:
    """Return the secrets in the named variables, split on commas but not trimmed."""
    names = (names,) if isinstance(names, str) else names
    values: list[str] = []
    for name in names:
        value = os.environ.get(name)
        if value is None or not value.strip():
            raise click.UsageError(
                f"no secret: set the environment variable {name} to the whsec_... value "
                "(or name another variable with --secret-env)"
            )
        values.extend(value.split(","))
    return values


def secrets_from_env(names: str | tuple[str, ...]) -> list[str]:
    """Return the secrets as the receiver reads them (trimmed)."""
    secrets = [s.strip() for s in raw_secrets(names)]
    if not all(secrets):
        raise click.UsageError("a secret in the environment is empty (stray comma?)")
    return secrets


class Unavailable(click.ClickException):
    """Something the command needs is not there (exit status 4)."""

    exit_code = EXIT_UNAVAILABLE


class ConfigProblem(click.ClickException):
    """The configuration cannot work: a bad store URL, secret or option (exit status 2).

    Unlike :class:`click.UsageError` it prints one line, without the usage text.
    """

    exit_code = EXIT_USAGE


def exit_for(exc: WebhookError) -> click.ClickException:
    """Turn a library error into the one-line CLI error with its README exit status."""
    if isinstance(exc, ConfigurationError):
        return ConfigProblem(str(exc))
    if isinstance(exc, StoreUnavailable):
        return Unavailable(f"ledger store unavailable: {exc}")
    return click.ClickException(f"{type(exc).__name__}: {exc}")


def _open(url: str, *, create: bool = True) -> Store:
    from gptimg_webhooks.stores import open_store

    try:
        return open_store(url, create=create)
    except WebhookError as exc:
        raise exit_for(exc) from exc


def open_readonly(url: str) -> Store:
    """Open a store only to read it (``ledger list``, ``ledger show``).

    Stores create no tables, files or folders for a mere read: a ledger that does not
    exist yet is unavailable (exit 4), never created.
    """
    return _open(url, create=False)


def open_writable(url: str) -> Store:
    """Open a store to change records (replay, prune)."""
    return _open(url)


def load_receiver(ref: str) -> Webhooks:
    """Import ``module:attribute`` and return the :class:`Webhooks` it names.

    The attribute may also be an adapter that holds one (``.receiver``), or a function
    that returns one. An app that cannot be imported exits 4; one whose configuration
    is wrong (no secret, a bad store URL) exits 2; never a traceback.
    """
    from gptimg_webhooks._core.receiver import Webhooks

    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"expected module:attribute, got {ref!r}", param_hint="--app")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like uvicorn: the app lives beside you
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
        if (
            not isinstance(target, Webhooks)
            and callable(target)
            and not hasattr(target, "receiver")
        ):
            target = target()
        target = getattr(target, "receiver", target)
    except ConfigurationError as exc:
        raise ConfigProblem(f"cannot load {ref!r}: {exc}") from exc
    except StoreUnavailable as exc:
        raise Unavailable(f"cannot load {ref!r}: ledger store unavailable: {exc}") from exc
    except (ImportError, AttributeError) as exc:
        raise Unavailable(f"cannot load {ref!r}: {exc}") from exc
    except Exception as exc:  # the app's own import failed: one line, not its traceback
        raise Unavailable(f"cannot load {ref!r}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(target, Webhooks):
        raise click.BadParameter(
            f"{ref!r} is a {type(target).__name__}, not a gptimg_webhooks.Webhooks receiver",
            param_hint="--app",
        )
    return target


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def fail(message: str, code: int = EXIT_FAILED) -> None:
    """Print ``message`` to stderr and exit with ``code``."""
    err_console.print(f"[red]error:[/red] {message}")
    sys.exit(code)


class _OneLine(logging.Formatter):
    """Render a log record on one line: an exception as ``Type: message``, no traceback."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text += f": {type(exc).__name__}: {exc}"
        return f"{record.levelname.lower()}: {' '.join(text.split())}"


def one_line_logs(level: int = logging.WARNING) -> None:
    """Print the library's log records to stderr one line each, tracebacks left out.

    A command's own output already says what failed; a 60-line chained traceback per
    failed delivery buries it.
    """
    logger = logging.getLogger("gptimg_webhooks")
    if any(getattr(h, "_gptimg_cli", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    handler._gptimg_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
