"""The adversarial table (``cases.toml``), run over real HTTP through every adapter.

One server per adapter for the whole module, every case against it. Each case checks the
answer, the ledger (read from the SQLite file the servers share), how often the handler
ran (``GET /generations``), and that nothing answered a 500 it did not earn; after the
table, the servers' resident memory is compared with what it was once warm.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from gptimg_webhooks.stores import open_store
from tests.hostile.examples import ADAPTERS, serve
from tests.hostile.table import (
    MAX_EVENT_AGE,
    OLD_SECRET,
    SECRET,
    Answer,
    build,
    load_cases,
    send,
    send_concurrently,
)
from tests.support.servers import Server

CASES = load_cases()
#: Allowed growth of the servers' summed resident memory (2 workers and their parent).
#: Over the whole table, once warm: the first pass through 1 MiB bodies, 100,000-deep
#: brackets and an 8 MiB chunked flood grows allocator arenas and SQLite's page cache once.
TABLE_GROWTH_BOUND = 32 << 20
#: Over 3 more rounds of the framing cases, after 2 rounds of warm-up (each round streams
#: an 8 MiB chunked flood, two 1 MiB bodies and 10 MiB of gzip inflation if anything
#: inflated it): a server that kept any one of those bodies per round would grow 24 MiB or
#: more. Measured without a leak: 0.3-0.5 MiB per 60 floods; a few MiB per round of
#: allocator fragmentation across two workers.
STEADY_GROWTH_BOUND = 16 << 20
ROUNDS = 3

pytestmark = pytest.mark.slow


@dataclass
class Target:
    adapter: str
    server: Server
    ledger: Any
    tag: str
    client: httpx.Client
    ran: list[str] = field(default_factory=list)
    rss_warm: int = 0

    @property
    def base(self) -> str:
        return self.server.base

    def runs(self, gid: str) -> int:
        rows = self.client.get(self.base + "/generations").json()
        return Counter(r["generationId"] for r in rows)[gid]


@pytest.fixture(scope="module", params=ADAPTERS)
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    adapter = request.param
    data = tmp_path_factory.mktemp(adapter)
    store = f"sqlite:///{data / 'ledger.sqlite3'}"
    with (
        serve(
            adapter, data, [SECRET, OLD_SECRET], store, options={"max_event_age": MAX_EVENT_AGE}
        ) as server,
        httpx.Client(timeout=30) as client,
    ):
        t = Target(adapter, server, open_store(store, create=False), uuid.uuid4().hex[:8], client)
        # Warm every worker up (imports, first connections, the keeper) before measuring.
        for case in CASES[:12]:
            for _ in range(2):
                send(t.base, build(case, f"gen_warm_{t.tag}_{uuid.uuid4().hex[:6]}"), client)
        t.rss_warm = server.rss()
        yield t


def _reset_guard(t: Target) -> None:
    # A done mark resets the endpoint guard's count of non-2xx answers, so every case sees
    # the same guard state whatever came before it (otherwise the 6th signed refusal in a
    # row would be answered 200 rejected_accepted, by design).
    case = {"name": "reset"}
    answer = send(t.base, build(case, f"gen_reset_{t.tag}_{uuid.uuid4().hex[:8]}"), t.client)
    assert (answer.status, answer.word) == (200, "processed"), answer


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case(target: Target, case: dict[str, Any]) -> None:
    t = target
    override = case.get("adapters", {}).get(t.adapter)
    if override is not None:
        assert len(override.get("note", "")) > 20, "an adapter's exception says why"
        case = {**case, **override}
    _reset_guard(t)
    gid = f"gen_h_{t.tag}_{case['name']}"
    request = build(case, gid)
    mode = case.get("send", "once")
    answers: list[Answer]
    if mode == "once":
        answers = [send(t.base, request, t.client)]
    elif mode == "twice":
        answers = [send(t.base, request, t.client), send(t.base, request, t.client)]
    elif mode == "forged":
        first = send(t.base, request, t.client)
        answers = [first, send(t.base, request.with_delivery(str(uuid.uuid4())), t.client)]
        assert (first.status, first.word) == (200, "processed"), first
    elif mode.startswith("concurrent:"):
        answers = asyncio.run(send_concurrently(t.base, request, int(mode.split(":")[1])))
    else:
        raise AssertionError(f"unknown send mode {mode!r}")

    statuses, words = _as_list(case["status"]), _as_list(case.get("answer", ""))
    checked = answers if mode.startswith("concurrent:") else answers[-1:]
    for answer in checked:
        where = f"{t.adapter} {case['name']}: {answer.status} {answer.body[:300]!r}"
        assert answer.status in statuses, where
        assert answer.status != 500, where  # nothing in this table earns a 500
        if answer.status == 0:
            continue
        if request.method != "HEAD":
            assert answer.word in words, where
        if answer.status >= 400 and not (case.get("server") and answer.word == ""):
            assert request.method == "HEAD" or answer.word, f"{where}: no JSON error code"
        if answer.status == 405:
            assert answer.headers.get("allow") == "POST", where
    if mode.startswith("concurrent:"):
        words_seen = Counter(a.word for a in answers)
        assert words_seen["processed"] == 1, words_seen

    if any(a.status == 0 for a in answers):
        time.sleep(1.0)  # no answer: give a server still at work the time to show it
    records = {k: t.ledger.get(k) for k in request.keys}
    found = {r.state.value for r in records.values() if r is not None}
    if case["ledger"] == "none":
        assert found == set(), f"{t.adapter} {case['name']}: ledger holds {found}"
    else:
        assert found == {case["ledger"]}, f"{t.adapter} {case['name']}: ledger holds {found}"
    assert t.runs(gid) == case["runs"], f"{t.adapter} {case['name']}: handler runs"
    t.ran.append(case["name"])


def test_memory_stays_bounded_over_the_table(target: Target) -> None:
    t = target
    assert len(t.ran) == len(CASES), "runs after the whole table"
    # Not the cases this adapter documents as waiting for the whole body (they only time out).
    heavy = [c for c in CASES if c["group"] == "framing" and t.adapter not in c.get("adapters", {})]

    def round_of_heavy_cases() -> None:
        for case in heavy:
            send(t.base, build(case, f"gen_mem_{t.tag}_{uuid.uuid4().hex[:6]}"), t.client)

    round_of_heavy_cases()
    round_of_heavy_cases()
    after_table = t.server.rss()
    for _ in range(ROUNDS):
        round_of_heavy_cases()
    steady = t.server.rss() - after_table
    table = after_table - t.rss_warm
    print(
        f"{t.adapter}: RSS {t.rss_warm / 2**20:.1f} MiB warm, {table / 2**20:+.1f} MiB over "
        f"the table, {steady / 2**20:+.1f} MiB over {ROUNDS} more rounds of framing cases"
    )
    assert table < TABLE_GROWTH_BOUND, f"{t.adapter}: RSS grew {table / 2**20:.1f} MiB"
    assert steady < STEADY_GROWTH_BOUND, f"{t.adapter}: RSS grew {steady / 2**20:.1f} MiB"


def test_every_case_says_why() -> None:
    assert len(CASES) >= 60
    for case in CASES:
        assert len(case["why"]) > 20, case["name"]
        assert set(case.get("adapters", {})) <= set(ADAPTERS), case["name"]
    assert len({c["group"] for c in CASES}) >= 8
