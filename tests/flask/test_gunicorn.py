"""The Flask example as users run it: ``gunicorn -w 4`` (sync workers), default SQLite ledger."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.flask.conftest import SECRET, delivery, signed
from tests.support.contract import check_contract, duplicate_storm
from tests.support.framing import assert_quiet_log, check_framing

pytestmark = pytest.mark.slow


def test_whole_http_contract_holds_under_gunicorn(flask_example: tuple[str, Path]) -> None:
    base, _ = flask_example
    cases = check_contract(base, SECRET)
    assert {c.status for c in cases} >= {200, 202, 400, 401, 405, 409, 413, 415, 500}


def test_concurrent_duplicates_run_each_delivery_once(flask_example: tuple[str, Path]) -> None:
    base, work = flask_example
    duplicate_storm(base, SECRET, n=500)
    # The default ledger: a SQLite file in the working directory, shared by the 4 workers.
    assert (work / "gptimg_webhooks.sqlite3").is_file()


def chunks(body: bytes, size: int = 1000) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


def test_chunked_bodies_are_read_whole_and_capped(flask_example: tuple[str, Path]) -> None:
    base, _ = flask_example
    url = base + "/hooks/gptimg"
    body, headers = delivery("gen_chunked_gunicorn")
    with httpx.Client(timeout=10) as client:
        # A generator has no length: httpx sends Transfer-Encoding: chunked.
        ok = client.post(url, content=chunks(body, 50), headers=headers)
        assert ok.status_code == 200, ok.text
        big = b'{"event":"generation.succeeded","pad":"' + b"x" * (2 << 20) + b'"}'
        refused = client.post(url, content=chunks(big, 64 * 1024), headers=signed(big))
        assert (refused.status_code, refused.json()["error"]) == (413, "payload_too_large")
        rows = client.get(base + "/generations").json()
    seen = Counter(r["generationId"] for r in rows)
    assert seen["gen_chunked_gunicorn"] == 1


def test_form_content_type_is_verified_on_the_raw_body(flask_example: tuple[str, Path]) -> None:
    base, _ = flask_example
    body, headers = delivery("gen_form_gunicorn")
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    response = httpx.post(base + "/hooks/gptimg", content=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text


def test_chunked_and_mismatched_bodies_are_read_right(flask_example: tuple[str, Path]) -> None:
    base, work = flask_example
    log = work / "server.log"
    mark = log.stat().st_size
    assert len(check_framing(base, SECRET)) == 7
    assert_quiet_log(log, since=mark)
