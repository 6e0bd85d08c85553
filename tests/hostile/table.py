"""Turn a row of ``cases.toml`` into bytes on a socket, and check what came back.

The vocabulary (body templates, signature forms, re-serialisations, framings) is
documented at the top of ``cases.toml``; this module is its only interpreter.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import json
import socket
import sys
import threading
import time
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CASES_FILE = Path(__file__).with_name("cases.toml")
PATH = "/hooks/gptimg"
MAX_BODY = 1 << 20

#: The receiver under test is configured with the first two (rotation); the third is retired.
SECRET = "whsec_" + base64.b64encode(b"hostile-suite/current-key-0001").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"hostile-suite/previous-key-001").decode()
RETIRED_SECRET = "whsec_" + base64.b64encode(b"hostile-suite/retired-key-0001").decode()
WRONG_SECRET = "whsec_" + base64.b64encode(b"hostile-suite/attacker-guess-1").decode()
#: max_event_age the servers run with (seconds): the replay cases are older than this.
MAX_EVENT_AGE = 3600


def load_cases() -> list[dict[str, Any]]:
    """Return every case of the table, checked for the fields each must have."""
    with CASES_FILE.open("rb") as f:
        cases: list[dict[str, Any]] = tomllib.load(f)["case"]
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    for c in cases:
        missing = {"name", "group", "status", "ledger", "runs", "why"} - set(c)
        assert not missing, f"{c['name']}: missing {missing}"
        assert c["ledger"] in ("none", "done", "failed"), c["name"]
    return cases


def hexsig(body: bytes, secret: str | bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def _stamp(delta: timedelta = timedelta()) -> str:
    return (datetime.now(timezone.utc) + delta).isoformat(timespec="milliseconds")[:-6] + "Z"


def _compact(value: Any, ascii_only: bool = False) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=ascii_only).encode()


def standard(kind: str, gid: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the payload of a delivery as the provider sends it, stamped now."""
    now = _stamp()
    if kind == "unknown":
        return {"event": "generation.cancelled", "data": {"generationId": gid, "reason": "user"}}
    succeeded = kind == "succeeded"
    data: dict[str, Any] = {
        "generationId": gid,
        "type": "text2img",
        "status": "succeeded" if succeeded else "failed",
        "outputs": [
            {
                "png": f"https://cdn.gptimage2.plus/o/{gid}/0.png",
                "webp": f"https://cdn.gptimage2.plus/o/{gid}/0.webp",
                "width": 1024,
                "height": 1024,
            }
        ]
        if succeeded
        else [],
        "error": None if succeeded else "content policy",
        "createdAt": now,
        "completedAt": now,
        **(extra or {}),
    }
    return {"event": f"generation.{kind}", "data": data}


def _template(text: str, gid: str) -> bytes:
    text = text.replace("@GID@", gid).replace("@NOW@", _stamp())
    text = text.replace("@OLD@", _stamp(-timedelta(days=2)))
    text = text.replace("@FUTURE@", _stamp(timedelta(days=1)))
    while "@DEEP:" in text:
        start = text.index("@DEEP:")
        end = text.index("@", start + 1)
        n = int(text[start + 6 : end])
        text = text[:start] + "[" * n + "]" * n + text[end + 1 :]
    while "@DIGITS:" in text:
        start = text.index("@DIGITS:")
        end = text.index("@", start + 1)
        text = text[:start] + "7" * int(text[start + 8 : end]) + text[end + 1 :]
    if "@PAD:FILL@" in text:
        fill = MAX_BODY - len(text.replace("@PAD:FILL@", "").encode())
        text = text.replace("@PAD:FILL@", "x" * fill)
    while "@PAD:" in text:
        start = text.index("@PAD:")
        end = text.index("@", start + 1)
        text = text[:start] + "x" * int(text[start + 5 : end]) + text[end + 1 :]
    body = text.encode()
    return body.replace(b"@XFF@", b"\xff").replace(b"@RAWSURR@", b"\xed\xa0\xbd")


def _reordered(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


def _after_sign(how: str | None, body: bytes) -> bytes:
    if how is None:
        return body
    if how == "trailing_newline":
        return body + b"\n"
    if how == "nfd":
        return unicodedata.normalize("NFD", body.decode()).encode()
    value = json.loads(body)
    if how == "reorder_keys":
        return _compact(_reordered(value))
    if how == "ensure_ascii":
        return _compact(value, ascii_only=True)
    if how == "indent":
        return json.dumps(value, indent=2, ensure_ascii=False).encode()
    if how == "crlf":
        return json.dumps(value, indent=2, ensure_ascii=False).replace("\n", "\r\n").encode()
    raise ValueError(f"unknown after_sign {how!r}")


def _signatures(how: str, body: bytes) -> list[str | bytes]:
    good = hexsig(body, SECRET)
    forms: dict[str, list[str | bytes]] = {
        "good": [good],
        "upper": [good.upper()],
        "mixed": ["".join(c.upper() if i % 2 else c for i, c in enumerate(good))],
        "wrong_secret": [hexsig(body, WRONG_SECRET)],
        "truncated": [good[:-1]],
        "overlong": [good + "0"],
        "doubled": [good + good],
        "other_body": [hexsig(b'{"event":"generation.succeeded"}', SECRET)],
        "base64": [
            base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
        ],
        "non_hex": ["g" * 64],
        "inner_space": [good[:32] + " " + good[32:]],
        "inner_tab": [good[:32] + "\t" + good[32:]],
        "prefix": ["sha256=" + good],
        "quoted": [f'"{good}"'],
        "non_ascii": [good[:63].encode() + b"\xe9"],
        "nul": [good[:32].encode() + b"\x00" + good[32:].encode()],
        "empty": [""],
        "missing": [],
        "repeated": [good, good],
        "repeated_mixed": [good, hexsig(body, WRONG_SECRET)],
        "folded": [f"{good}, {good}"],
        "svix_key": [hexsig(body, base64.b64decode(SECRET.removeprefix("whsec_")))],
        "no_prefix_key": [hexsig(body, SECRET.removeprefix("whsec_"))],
        "newline_key": [hexsig(body, SECRET + "\n")],
        "second_secret": [hexsig(body, OLD_SECRET)],
        "retired_secret": [hexsig(body, RETIRED_SECRET)],
    }
    return forms[how]


@dataclass
class Request:
    """One request a case sends, and the bytes whose HMAC the ledger would key on."""

    method: str
    headers: list[tuple[str, str | bytes]]
    body: bytes
    signed: bytes
    gid: str
    transport: str = "httpx"
    framing: str = "content-length"
    header_case: str | None = None

    def with_delivery(self, delivery_id: str) -> Request:
        headers = [
            (k, delivery_id if k.lower() == "x-gptimg-delivery" else v) for k, v in self.headers
        ]
        return Request(**{**self.__dict__, "headers": headers})

    @property
    def keys(self) -> set[str]:
        found = {hashlib.sha256(self.signed).hexdigest()}
        if self.body:  # a bodiless request (GET) must not be judged by the empty body's key
            found.add(hashlib.sha256(self.body).hexdigest())
        return found


def build(case: dict[str, Any], gid: str) -> Request:
    """Build the request a case describes, for generation id ``gid``."""
    kind = case.get("body", "succeeded")
    if "json" in case:
        signed = _template(case["json"], gid)
    else:
        signed = _compact(standard(kind, gid, case.get("extra")))
    encode = case.get("encode")
    if encode == "utf-16":
        signed = signed.decode().encode("utf-16")
    elif encode == "bom":
        signed = b"\xef\xbb\xbf" + signed
    elif encode == "nfd":
        signed = unicodedata.normalize("NFD", signed.decode()).encode()
    elif encode == "trailing_newline":
        signed += b"\n"
    elif encode == "gzip_bomb":
        signed = gzip.compress(b"\0" * (10 << 20), compresslevel=9)
    body = _after_sign(case.get("after_sign"), signed)
    try:
        event = str(json.loads(signed).get("event") or "generation.succeeded")
    except (ValueError, AttributeError, RecursionError):
        event = "generation.succeeded"
    headers: list[tuple[str, str | bytes]] = [
        ("X-Gptimg-Signature", s) for s in _signatures(case.get("sign", "good"), signed)
    ]
    headers += [
        ("X-Gptimg-Delivery", str(uuid.uuid4())),
        ("X-Gptimg-Event", event),
        ("Content-Type", "application/json"),
    ]
    for name, value in (case.get("headers") or {}).items():
        headers = [(k, v) for k, v in headers if k.lower() != name.lower()]
        if value != "@DROP@":
            headers.append((name, _fill(value)))
    for name, value in case.get("extra_headers", []):
        headers.append((name, _fill(value)))
    method = case.get("method", "POST")
    if method in ("GET", "HEAD", "OPTIONS", "DELETE"):
        body = b""
    return Request(
        method,
        headers,
        body,
        signed,
        gid,
        case.get("transport", "httpx"),
        case.get("framing", "content-length"),
        case.get("header_case"),
    )


def _fill(value: str) -> str:
    value = value.replace("@UUID@", str(uuid.uuid4()))
    if value.startswith("@LONG:"):
        return "a" * int(value[6:-1])
    return value


@dataclass
class Answer:
    """What came back: status 0 when the server closed without answering."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def word(self) -> str:
        """Return the JSON answer's ``status`` (2xx) or ``error`` (4xx/5xx), or ''."""
        try:
            found = json.loads(self.body)
        except ValueError:
            return ""
        if not isinstance(found, dict):
            return ""
        return str(found.get("status") if found.get("ok") else found.get("error") or "")


def send(base: str, request: Request, client: httpx.Client) -> Answer:
    """Send one request over httpx or a raw socket."""
    if request.transport == "raw":
        return send_raw(base, request)
    response = client.request(
        request.method, base + PATH, content=request.body, headers=request.headers
    )
    return Answer(response.status_code, dict(response.headers), response.content)


def _name(name: str, case: str | None) -> str:
    if case == "lower":
        return name.lower()
    if case == "upper":
        return name.upper()
    if case == "alternating":
        return "".join(c.lower() if i % 2 else c.upper() for i, c in enumerate(name))
    return name


def _chunks(body: bytes, extensions: bool) -> bytes:
    step = max(1, len(body) // 3 + 1)
    out = b""
    for i in range(0, len(body), step):
        piece = body[i : i + step]
        ext = b';gptimg=1;note="x"' if extensions else b""
        out += f"{len(piece):x}".encode() + ext + b"\r\n" + piece + b"\r\n"
    return out + b"0\r\n\r\n"


class _Reader(threading.Thread):
    """Read one HTTP response off a socket in the background while the request is sent."""

    def __init__(self, sock: socket.socket, head_only: bool) -> None:
        super().__init__(daemon=True)
        self.sock, self.head_only = sock, head_only
        self.data = b""
        self.complete = threading.Event()

    def run(self) -> None:
        try:
            while not self.complete.is_set():
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.data += chunk
                if self._whole():
                    break
        except OSError:
            pass
        self.complete.set()

    def _whole(self) -> bool:
        head, sep, rest = self.data.partition(b"\r\n\r\n")
        if not sep:
            return False
        if self.head_only:
            return True
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                return len(rest) >= int(value.strip())
        return False


def _parse(data: bytes) -> Answer:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/"):
        return Answer(0)
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return Answer(status, headers, rest)


def send_raw(base: str, request: Request, timeout: float = 8.0) -> Answer:
    """Write the request byte by byte as the case frames it; read the first answer."""
    host, port = base.removeprefix("http://").split(":")
    lines = [f"{request.method} {PATH} HTTP/1.1".encode(), f"Host: {host}:{port}".encode()]
    for name, value in request.headers:
        raw = value if isinstance(value, bytes) else value.encode("latin-1")
        lines.append(_name(name, request.header_case).encode() + b": " + raw)
    body = request.body
    framing = request.framing
    if framing in ("chunked", "chunked_ext", "chunked_flood"):
        lines.append(b"Transfer-Encoding: chunked")
    elif framing == "cl_longer":
        lines.append(f"Content-Length: {len(body) + 10}".encode())
    elif framing == "cl_shorter":
        lines.append(f"Content-Length: {len(body) - 10}".encode())
    elif framing == "declare_huge":
        lines.append(f"Content-Length: {512 << 20}".encode())
    else:
        lines.append(f"Content-Length: {len(body)}".encode())
    lines.append(b"Connection: close")
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    reader = _Reader(sock, head_only=request.method == "HEAD")
    reader.start()
    try:
        sock.sendall(head)
        if framing in ("chunked", "chunked_ext"):
            sock.sendall(_chunks(body, framing == "chunked_ext"))
        elif framing == "chunked_flood":
            piece = b"x" * 65536
            frame = f"{len(piece):x}".encode() + b"\r\n" + piece + b"\r\n"
            deadline = time.monotonic() + timeout
            for _ in range(8 << 20 >> 16):  # 8 MiB at most, 8x the cap
                if reader.complete.is_set() or time.monotonic() > deadline:
                    break
                sock.sendall(frame)
        elif framing == "declare_huge":
            sock.sendall(b"{" + b" " * 65535)  # then wait: nothing more is coming
        elif framing == "cl_longer":
            sock.sendall(body)
            sock.shutdown(socket.SHUT_WR)
        else:
            sock.sendall(body)
    except OSError:
        pass  # the server answered and closed before taking it all: read what it said
    reader.join(timeout)
    sock.close()
    return _parse(reader.data)


async def send_concurrently(base: str, request: Request, copies: int) -> list[Answer]:
    """Send ``copies`` identical requests at the same instant."""
    limits = httpx.Limits(max_connections=copies, keepalive_expiry=1.0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        gate = asyncio.Event()

        async def one() -> Answer:
            await gate.wait()
            r = await client.request(
                request.method, base + PATH, content=request.body, headers=request.headers
            )
            return Answer(r.status_code, dict(r.headers), r.content)

        tasks = [asyncio.create_task(one()) for _ in range(copies)]
        await asyncio.sleep(0.05)
        gate.set()
        return list(await asyncio.gather(*tasks))
