"""``send``: deliver sample events (or a body) to a URL with the provider's retry policy."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click
from rich.live import Live
from rich.table import Table

from gptimg_webhooks.cli._common import (
    EXIT_DISABLED,
    EXIT_FAILED,
    EXIT_OK,
    console,
    err_console,
    json_option,
    print_json,
    secret_env_option,
    secrets_from_env,
)
from gptimg_webhooks.testing.deliveries import SignedDelivery, signed
from gptimg_webhooks.testing.factories import events
from gptimg_webhooks.testing.simulator import Clock, Policy, Report, SimEvent, Simulator

__all__ = ["send"]

DEFAULT_URL = "http://127.0.0.1:8000/hooks/gptimg"


def _report_json(report: Report) -> dict[str, Any]:
    sample = report.delivery.sample
    return {
        "delivery_id": report.delivery.delivery_id,
        "generation_id": sample.generation_id if sample is not None else None,
        "outcome": report.outcome,
        "duration": round(report.duration, 3),
        "attempts": [
            {
                "number": a.number,
                "at": round(a.at, 3),
                "sent_at": a.sent_at.isoformat(),
                "latency_ms": round(a.latency * 1000, 1),
                "status": a.status,
                "answer": a.answer,
                "error": a.error,
            }
            for a in report.attempts
        ],
    }


class _Display:
    """Follow the simulator: a live table on a terminal, one line per step otherwise."""

    def __init__(self, clock: Clock, live: bool) -> None:
        self.clock = clock
        self.live = live
        self.rows: dict[int, tuple[Report, str]] = {}
        self.waiting: dict[int, float] = {}

    def __call__(self, event: SimEvent) -> None:
        report, key = event.report, id(event.report)
        label = self._label(report)
        if event.kind == "waiting" and event.until is not None:
            self.waiting[key] = event.until
            self.rows[key] = (report, f"attempt {event.number} due")
            if not self.live:
                delay = event.until - self.clock.now()
                real = delay / self.clock.scale
                console.print(
                    f"{label} next attempt {event.number} in {delay:.0f}s (real {real:.2f}s)"
                )
        elif event.kind == "sending":
            self.waiting.pop(key, None)
            self.rows[key] = (report, f"sending attempt {event.number}")
        elif event.kind == "answered" and event.attempt is not None:
            a = event.attempt
            self.rows[key] = (report, a.describe())
            if not self.live:
                colour = "green" if a.ok else "red"
                console.print(
                    f"{label} attempt {a.number} at t={a.at:.0f}s: "
                    f"[{colour}]{a.describe()}[/{colour}] ({a.latency * 1000:.0f} ms)"
                )
        elif event.kind == "done":
            self.waiting.pop(key, None)
            self.rows[key] = (report, report.outcome)

    @staticmethod
    def _label(report: Report) -> str:
        sample = report.delivery.sample
        gid = sample.generation_id if sample is not None else "body"
        return f"[bold]{gid}[/bold] ({(report.delivery.delivery_id or '')[:8]})"

    def __rich__(self) -> Table:
        table = Table(expand=False)
        for name in ("delivery", "attempts", "now"):
            table.add_column(name)
        for key, (report, state) in self.rows.items():
            answers = ", ".join(f"{a.number}: {a.describe()}" for a in report.attempts)
            until = self.waiting.get(key)
            now = state
            if until is not None:
                left = max(until - self.clock.now(), 0)
                now = f"next attempt in {left:.0f}s (real {left / self.clock.scale:.1f}s)"
            table.add_row(self._label(report), answers, now)
        return table


def _hint_401(secret_env: str, retried: bool) -> str:
    what = "" if retried else " Not retried: a retry cannot fix it (--retry-401 retries anyway)."
    return (
        f"401 invalid_signature: the receiver refused the signature, so the secret in "
        f"{secret_env} is not the one the receiver is configured with (check both, quotes "
        "and whitespace included; `gptimg-webhooks verify` explains a captured request)." + what
    )


def _summary(reports: list[Report], simulator: Simulator) -> Table:
    table = Table(title="summary")
    for name in ("delivery", "outcome", "attempts", "answers", "took (simulated)"):
        table.add_column(name)
    for report in reports:
        colour = "green" if report.delivered else "red"
        table.add_row(
            _Display._label(report),
            f"[{colour}]{report.outcome}[/{colour}]",
            str(len(report.attempts)),
            ", ".join(a.describe() for a in report.attempts),
            f"{report.duration:.0f}s",
        )
    return table


@click.command()
@click.argument("url", default=DEFAULT_URL)
@click.option(
    "--event",
    "event_name",
    type=click.Choice(["succeeded", "failed", "unknown"]),
    default="succeeded",
    show_default=True,
    help="Which sample event to send.",
)
@click.option("--generation-id", help="Generation id of the sample (default: a fresh one).")
@click.option(
    "--body",
    "body_file",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    help="Send this file's bytes instead of a sample ('-' for stdin).",
)
@click.option("--count", default=1, show_default=True, help="Distinct deliveries to send.")
@click.option(
    "--copies",
    default=1,
    show_default=True,
    help="Concurrent copies of each delivery under the same id (retries racing).",
)
@click.option(
    "--forged",
    default=0,
    show_default=True,
    help="Extra concurrent copies of each under a forged fresh id (replays).",
)
@click.option(
    "--concurrency",
    default=0,
    help="At most this many deliveries in flight (default: all at once).",
)
@click.option(
    "--time-scale",
    default=1.0,
    show_default=True,
    help="Compress the retry schedule: 60 turns 30 s into 0.5 s.",
)
@click.option(
    "--timeout",
    default=5.0,
    show_default=True,
    help="Seconds per attempt (real time, never scaled).",
)
@click.option(
    "--attempts",
    default=len(Policy().retry_delays) + 1,
    show_default=True,
    type=click.IntRange(1, len(Policy().retry_delays) + 1),
    help="Attempts per delivery: 1 sends once; the provider makes 4.",
)
@click.option(
    "--retry-401",
    is_flag=True,
    help="Retry after a 401 too, as the provider does (by default a 401 stops: no retry "
    "fixes a secret mismatch).",
)
@secret_env_option()
@json_option
def send(
    url: str,
    event_name: str,
    generation_id: str | None,
    body_file: str | None,
    count: int,
    copies: int,
    forged: int,
    concurrency: int,
    time_scale: float,
    timeout: float,
    attempts: int,
    retry_401: bool,
    secret_env: str,
    as_json: bool,
) -> None:
    """Deliver signed sample events to URL the way the provider does.

    Each attempt has a timeout; any non-2xx or timeout is retried after 30 s, 2 min and
    10 min (divided by --time-scale); 8 consecutive failed attempts disable the endpoint.
    --attempts 1 sends once. A 401 (the secrets differ) stops the retries at once, with
    a hint, unless --retry-401.

    Exit status: 0 all delivered, 1 some not delivered, 2 usage, 3 endpoint disabled.
    """
    if time_scale <= 0 or timeout <= 0 or count < 1 or copies < 0 or forged < 0:
        raise click.UsageError("--time-scale, --timeout and --count must be positive")
    secret = secrets_from_env(secret_env)[0]
    batch: list[SignedDelivery] = []
    raw = None
    if body_file is not None:
        raw = sys.stdin.buffer.read() if body_file == "-" else Path(body_file).read_bytes()
    for _ in range(count):
        if raw is not None:
            delivery = signed(raw, secret)
        else:
            factory = getattr(events, event_name)
            options = {"generation_id": generation_id} if generation_id else {}
            delivery = signed(factory(**options), secret)
        batch += [delivery] * copies + [delivery.forged() for _ in range(forged)]

    clock = Clock(time_scale)
    live = console.is_terminal and not as_json
    display = _Display(clock, live)
    simulator = Simulator(
        url,
        secret,
        policy=Policy(
            timeout=timeout,
            retry_delays=Policy().retry_delays[: attempts - 1],
            stop_on=() if retry_401 else (401,),
        ),
        clock=clock,
        observer=None if as_json else display,
    )

    async def run() -> list[Report]:
        gate = asyncio.Semaphore(concurrency if concurrency > 0 else len(batch))

        async def one(delivery: SignedDelivery) -> Report:
            async with gate:
                return await simulator.adeliver(delivery)

        return list(await asyncio.gather(*(one(d) for d in batch)))

    if not as_json:
        console.print(f"sending {len(batch)} delivery(ies) to {url} (time scale {time_scale:g})")
    if live:
        with Live(display, console=console, refresh_per_second=8, transient=True):
            reports = asyncio.run(run())
    else:
        reports = asyncio.run(run())
    simulator.close()

    refused = any(a.status == 401 for r in reports for a in r.attempts)
    hint = _hint_401(secret_env, retry_401) if refused else None
    if as_json:
        print_json(
            {
                "url": url,
                "hint": hint,
                "delivered": all(r.delivered for r in reports),
                "disabled": simulator.disabled,
                "consecutive_failures": simulator.consecutive_failures,
                "deliveries": [_report_json(r) for r in reports],
            }
        )
    else:
        console.print(_summary(reports, simulator))
        if simulator.disabled:
            console.print(
                f"[red]endpoint disabled[/red] after {simulator.policy.disable_after} "
                "consecutive failed attempts: the provider would stop sending until it is "
                "re-enabled in its dashboard"
            )
        if hint:
            err_console.print(f"[yellow]hint[/yellow]: {hint}")
    if simulator.disabled:
        sys.exit(EXIT_DISABLED)
    sys.exit(EXIT_OK if all(r.delivered for r in reports) else EXIT_FAILED)
