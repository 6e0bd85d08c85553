"""What every command shares: exit codes, secrets from the environment, output."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console

__all__ = [
    "EXIT_DISABLED",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "SECRET_ENV",
    "Unavailable",
    "console",
    "err_console",
    "json_option",
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


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def fail(message: str, code: int = EXIT_FAILED) -> None:
    """Print ``message`` to stderr and exit with ``code``."""
    err_console.print(f"[red]error:[/red] {message}")
    sys.exit(code)
