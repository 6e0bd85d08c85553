"""Coverage-guided fuzz target for the sans-I/O entry point (atheris / libFuzzer).

One input is ``flags || headers || b"\\n\\n" || body``: the flags byte says whether to sign
the body with the target's secret (bit 0), which method to use (bits 1-2), whether to
repeat the signature header (bit 3); the headers are ``name: value`` lines. Every input
goes through ``verify_request``, ``strictjson.loads`` + ``parse_event`` and
``Webhooks.handle`` on a memory ledger; anything but the library's documented rejections
is a crash.

    python fuzz/fuzz_verify_request.py fuzz/corpus/verify_request -max_total_time=600

(by hand, as long as you like; CI runs it for 20 s: tests/hostile/test_fuzz.py). A crash
leaves ``crash-<sha1>`` in the working directory: copy it to ``fuzz/regressions/``,
where tests/hostile/test_fuzz.py replays every file on every run.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import sys
import time
from typing import Any

atheris: Any
try:
    import atheris
except ImportError:  # hypothesis drives check() instead: tests/hostile/test_fuzz.py
    atheris = None

# Coverage feedback needs the library instrumented as it is imported.
instrumented = (
    atheris.instrument_imports(include=["gptimg_webhooks"])
    if atheris is not None and __name__ == "__main__"
    else contextlib.nullcontext()
)
with instrumented:
    from gptimg_webhooks import Webhooks
    from gptimg_webhooks._core import strictjson
    from gptimg_webhooks._core.errors import RequestRejected
    from gptimg_webhooks._core.events import parse_event
    from gptimg_webhooks._core.protocol import Limits, verify_request
    from gptimg_webhooks._core.signature import Verifier

SECRET = "whsec_fuzz_target_secret"
METHODS = ("POST", "GET", "PUT", "HEAD")
LIMITS = Limits(Verifier([SECRET]), max_body_size=64 * 1024, max_event_age=3600)
#: Every status the README's HTTP contract documents; no handlers here, so no 500.
ANSWERS = {200, 202, 400, 401, 405, 409, 413, 415}

_receiver: Webhooks | None = None


def receiver() -> Webhooks:
    global _receiver
    if _receiver is None:
        _receiver = Webhooks(
            SECRET,
            store="memory://?max_records=10000",
            include_shared=False,
            reply_deadline=None,
            sweep=False,
            max_event_age=3600,
        )
    return _receiver


def split(data: bytes) -> tuple[str, list[tuple[bytes, bytes]], bytes]:
    """Decode one fuzz input into method, headers and body."""
    flags = data[0] if data else 0
    head, _, body = data[1:].partition(b"\n\n")
    headers: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\n")[:16]:
        name, sep, value = line.partition(b":")
        if sep:
            headers.append((name.strip(), value.strip()))
    if flags & 1:
        signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest().encode()
        headers.append((b"X-Gptimg-Signature", signature))
        if flags & 8:
            headers.append((b"X-Gptimg-Signature", signature))
    return METHODS[(flags >> 1) & 3], headers, body


def check(data: bytes) -> None:
    """Run one input through every entry point; raise on anything undocumented."""
    method, headers, body = split(data)
    try:
        verify_request(LIMITS, method, headers, body, time.time())
    except RequestRejected:
        pass
    try:
        parse_event(strictjson.loads(body))
    except RequestRejected as exc:
        assert exc.status == 400, exc
    answer = receiver().handle(method, headers, body)
    assert answer.status in ANSWERS, (answer.status, answer.body)
    found = json.loads(answer.body)
    assert found["ok"] is (answer.status < 300), found


def main() -> None:
    """Fuzz until libFuzzer's own limits stop it (``-max_total_time``, ``-runs``)."""
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris (Python 3.11/3.12, Linux)")
    logging.getLogger("gptimg_webhooks").setLevel(logging.CRITICAL)  # rejections are expected
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
