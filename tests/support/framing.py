"""How a live server reads request bodies: chunked, capped, mismatched lengths, disconnects.

Raw HTTP/1.1 over a socket, so each case controls its framing byte by byte. The server must
run one of the examples (handlers record to ``/generations``) with the default 1 MiB cap.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.support.contract import headers, payload

CAP = 1 << 20
PATH = "/hooks/gptimg"


@dataclass
class Answer:
    status: int  # 0: the server closed the connection without answering
    body: bytes
    elapsed: float


def _head(base: str, fields: dict[str, str]) -> bytes:
    host = urlsplit(base).netloc
    lines = [f"POST {PATH} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in fields.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _connect(base: str) -> socket.socket:
    parts = urlsplit(base)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_answer(sock: socket.socket, started: float, timeout: float = 10.0) -> Answer:
    """Read one response (Content-Length framed, as every adapter answers), or the close."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            if not more:
                return Answer(0, data, time.monotonic() - started)
            data += more
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        while len(rest) < length:
            more = sock.recv(65536)
            if not more:
                break
            rest += more
        return Answer(status, rest[:length], time.monotonic() - started)
    except ConnectionResetError:
        return Answer(0, data, time.monotonic() - started)


def exchange(base: str, raw: bytes, *, half_close: bool = False) -> Answer:
    """Send ``raw`` as is (optionally then shut the write side) and read the answer."""
    started = time.monotonic()
    with _connect(base) as sock:
        sock.sendall(raw)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return _read_answer(sock, started)


def chunked(body: bytes, size: int, extension: str = "") -> bytes:
    """Encode ``body`` as chunks of ``size`` bytes (each with ``extension``), then the last one."""
    out = bytearray()
    for i in range(0, len(body), size):
        piece = body[i : i + size]
        out += f"{len(piece):x}{extension}\r\n".encode() + piece + b"\r\n"
    out += f"0{extension}\r\n\r\n".encode()
    return bytes(out)


def signed_fields(body: bytes, secret: str, **extra: str) -> dict[str, str]:
    return {**headers(body, secret), "Connection": "close", **extra}


def over_cap_body() -> bytes:
    return b'{"event":"generation.succeeded","pad":"' + b"x" * (2 * CAP) + b'"}'


def refuses_chunked_over_cap(base: str, secret: str) -> Answer:
    """Stream 2 MiB in 64 KiB chunks, stopping at the first sign of an answer."""
    body = over_cap_body()
    started = time.monotonic()
    with _connect(base) as sock:
        sock.sendall(_head(base, signed_fields(body, secret, **{"Transfer-Encoding": "chunked"})))
        wire = chunked(body, 64 * 1024)
        try:
            for i in range(0, len(wire), 64 * 1024):
                sock.sendall(wire[i : i + 64 * 1024])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the body ended: what we want
        return _read_answer(sock, started)


def check_framing(base: str, secret: str, *, reads_whole_body_first: bool = False) -> list[str]:
    """Check every framing case against ``base``; return the names of the cases checked.

    ``reads_whole_body_first``: the framework reads the body before the app runs (Django
    under ASGI), so a too-long Content-Length is answered once the body has arrived.
    """
    tag = uuid.uuid4().hex[:8]
    done: list[str] = []

    def expect(name: str, answer: Answer, status: int, outcome: str) -> None:
        assert answer.status == status, f"{name}: {answer.status} {answer.body!r}"
        key = "status" if status < 400 else "error"
        assert httpx.Response(status, content=answer.body).json()[key] == outcome, name
        done.append(name)

    small = payload(f"gen_chunked_{tag}")
    raw = _head(base, signed_fields(small, secret, **{"Transfer-Encoding": "chunked"}))
    expect("small chunked", exchange(base, raw + chunked(small, 10)), 200, "processed")

    ext = payload(f"gen_chunkext_{tag}")
    raw = _head(base, signed_fields(ext, secret, **{"Transfer-Encoding": "chunked"}))
    answer = exchange(base, raw + chunked(ext, 25, extension=';name="v";flag'))
    expect("chunk extensions", answer, 200, "processed")

    expect("chunked over cap", refuses_chunked_over_cap(base, secret), 413, "payload_too_large")

    big = over_cap_body()
    fields = signed_fields(big, secret, **{"Content-Length": str(len(big))})
    if reads_whole_body_first:
        answer = exchange(base, _head(base, fields) + big)
    else:
        # Headers only: answering at all proves the body was not waited for.
        answer = exchange(base, _head(base, fields))
    expect("content-length over cap", answer, 413, "payload_too_large")

    short = payload(f"gen_clshort_{tag}")
    fields = signed_fields(short, secret, **{"Content-Length": str(len(short))})
    answer = exchange(base, _head(base, fields) + short + b"TRAILING-GARBAGE")
    expect("bytes past content-length are not body", answer, 200, "processed")

    long = payload(f"gen_cllong_{tag}")
    fields = signed_fields(long, secret, **{"Content-Length": str(len(long) + 100)})
    answer = exchange(base, _head(base, fields) + long, half_close=True)
    # The body never completes: the server may answer 400 or just close; never a 5xx.
    assert answer.status in (0, 400), f"content-length too long: {answer.status} {answer.body!r}"
    done.append("content-length longer than the body")

    gone = payload(f"gen_gone_{tag}")
    with _connect(base) as sock:
        sock.sendall(_head(base, signed_fields(gone, secret, **{"Transfer-Encoding": "chunked"})))
        sock.sendall(chunked(gone, 10)[:40])  # then vanish mid-body
    done.append("client disconnect mid-body")

    rows = httpx.get(base + "/generations", timeout=10).json()
    seen = Counter(r["generationId"] for r in rows)
    assert seen[f"gen_chunked_{tag}"] == 1
    assert seen[f"gen_chunkext_{tag}"] == 1
    assert seen[f"gen_clshort_{tag}"] == 1
    assert seen[f"gen_cllong_{tag}"] == 0
    assert seen[f"gen_gone_{tag}"] == 0
    return done


def assert_quiet_log(log: Path, since: int = 0) -> None:
    """The server log, from byte ``since`` on, holds no traceback and no 500."""
    time.sleep(0.5)  # the disconnect case is handled after the client has gone
    with log.open("rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    assert "Traceback" not in text, text[-4000:]
    assert "Internal Server Error" not in text, text[-4000:]
