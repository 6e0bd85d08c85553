"""``sign`` and ``verify``: compute a signature; check a captured request and explain."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape

from gptimg_webhooks._core.signature import sign as sign_body
from gptimg_webhooks.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    console,
    json_option,
    print_json,
    raw_secrets,
    secret_env_option,
    secrets_from_env,
)
from gptimg_webhooks.cli._diagnose import diagnose

__all__ = ["sign", "verify"]


def _read(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {source!r}: {exc.strerror}") from exc


@click.command()
@click.argument("file", default="-", metavar="[FILE]")
@secret_env_option()
@json_option
def sign(file: str, secret_env: str, as_json: bool) -> None:
    """Print the X-Gptimg-Signature of FILE's bytes (default: stdin).

    The bytes are signed exactly as read: no newline is added or removed.
    """
    body = _read(file)
    secret = secrets_from_env(secret_env)[0]
    signature = sign_body(body, secret)
    if as_json:
        print_json({"signature": signature, "bytes": len(body)})
    else:
        click.echo(signature)


def _parse_header(line: str) -> tuple[str, str] | None:
    name, sep, value = line.partition(":")
    if not sep or not name.strip() or " " in name.strip():
        return None
    return name.strip(), value.lstrip(" \t").rstrip("\r\n")


@click.command()
@click.argument("body", default="-", metavar="[BODY_FILE]")
@click.option(
    "-H",
    "--header",
    "header_lines",
    multiple=True,
    metavar="'NAME: VALUE'",
    help="A request header as captured; repeat for each.",
)
@click.option(
    "--headers-file",
    type=click.Path(exists=True, dir_okay=False),
    help="A file of 'Name: value' lines (a request line, if any, is skipped).",
)
@secret_env_option(multiple=True)
@json_option
def verify(
    body: str,
    header_lines: tuple[str, ...],
    headers_file: str | None,
    secret_env: tuple[str, ...],
    as_json: bool,
) -> None:
    """Check a captured request against the secret(s); explain a failure.

    BODY_FILE holds the raw body bytes (default: stdin). Headers come from -H options
    and/or --headers-file. Names the cause when it is a known one: re-serialised body,
    compressed body, whitespace or quotes around the secret, a base64-decoded key,
    a 'sha256=' prefix, or the wrong secret. An uppercase signature is only a warning.

    Says what the library's receiver would answer the request as a new delivery.

    Exit status: 0 the receiver would answer 2xx, 1 it would not (an invalid signature,
    or a valid one with bad headers or body), 2 usage.
    """
    raw = _read(body)
    headers: list[tuple[str, str]] = []
    lines = list(header_lines)
    if headers_file:
        lines += Path(headers_file).read_text(encoding="latin-1").splitlines()
    for line in lines:
        parsed = _parse_header(line)
        if parsed is None:
            if line.strip() and line in header_lines:
                raise click.BadParameter(f"not a 'Name: value' header: {line!r}", param_hint="-H")
            continue
        headers.append(parsed)
    secrets = raw_secrets(secret_env)
    result = diagnose(raw, headers, secrets)
    if as_json:
        print_json(result.as_json())
    else:
        answer = result.answer
        said = (
            f"{answer.status} {answer.code}"
            if answer is not None
            else "nothing: it would refuse to start with this secret"
        )
        if result.accepted:
            assert result.matched is not None
            index, sid = result.matched
            console.print(
                f"[green]valid[/green]: signed with secret #{index} ({sid}); the library "
                f"would answer {said}"
            )
        elif result.valid:
            assert result.matched is not None
            index, sid = result.matched
            why = f": {escape(answer.message)}" if answer is not None else ""
            console.print(
                f"[red]refused[/red]: the signature is valid (secret #{index}, {sid}), but "
                f"the library would answer {said}{why}"
            )
            for cause in result.causes:  # a configured secret the receiver refuses
                console.print(f"  [bold]cause[/bold] {cause.code}: {cause.message}")
        else:
            console.print(f"[red]invalid[/red]: the library would answer {said}")
            for cause in result.causes:
                console.print(f"  [bold]cause[/bold] {cause.code}: {cause.message}")
        for warning in result.warnings:
            console.print(f"  [yellow]warning[/yellow] {warning.code}: {warning.message}")
    sys.exit(EXIT_OK if result.accepted else EXIT_FAILED)
