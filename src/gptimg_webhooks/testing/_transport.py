"""Ways to put one HTTP request in front of an app: a URL, an ASGI app, a WSGI app.

Each transport answers ``arequest`` (async) and ``request`` (sync). In-process calls
need no server and no extra package; a URL needs ``httpx``.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import sys
import threading
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

__all__ = [
    "ASGITransport",
    "Answer",
    "DjangoTransport",
    "FlaskTransport",
    "LoopThread",
    "Transport",
    "URLTransport",
    "WSGITransport",
    "is_asgi",
    "transport_for",
]

T = TypeVar("T")
RawHeaders = Iterable[tuple[str, str]]


@dataclass(frozen=True)
class Answer:
    """The app's answer to one request."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class LoopThread:
    """One event loop in a daemon thread, so sync code can keep async apps on one loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="gptimg-webhooks-loop", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


class Transport:
    """Send one request; subclasses implement :meth:`arequest` or :meth:`request`."""

    #: Where requests go, for reports.
    target: str = ""

    async def arequest(
        self, method: str, path: str | None, headers: RawHeaders, body: bytes, timeout: float
    ) -> Answer:
        return await asyncio.wait_for(
            asyncio.to_thread(self.request, method, path, headers, body, timeout), timeout
        )

    def request(
        self, method: str, path: str | None, headers: RawHeaders, body: bytes, timeout: float
    ) -> Answer:
        return asyncio.run(self.arequest(method, path, headers, body, timeout))

    def close(self) -> None:
        """Release what the transport holds."""


class URLTransport(Transport):
    """A live server: ``url`` is the endpoint, or a base that ``path`` is joined to."""

    def __init__(self, url: str) -> None:
        import httpx

        self._httpx = httpx
        self.url = url.rstrip("/") if urlsplit(url).path in ("", "/") else url
        self.target = self.url
        self._client: Any = None

    def _url(self, path: str | None) -> str:
        if path is None or urlsplit(self.url).path not in ("", "/"):
            return self.url
        return self.url + path

    async def arequest(
        self, method: str, path: str | None, headers: RawHeaders, body: bytes, timeout: float
    ) -> Answer:
        httpx = self._httpx
        async with httpx.AsyncClient(timeout=timeout) as client:
            try:
                r = await client.request(
                    method, self._url(path), content=body, headers=list(headers)
                )
            except httpx.TimeoutException as exc:
                raise TimeoutError(str(exc) or "timed out") from exc
        return Answer(r.status_code, list(r.headers.items()), r.content)

    def request(
        self, method: str, path: str | None, headers: RawHeaders, body: bytes, timeout: float
    ) -> Answer:
        httpx = self._httpx
        if self._client is None:
            self._client = httpx.Client()
        try:
            r = self._client.request(
                method, self._url(path), content=body, headers=list(headers), timeout=timeout
            )
        except httpx.TimeoutException as exc:
            raise TimeoutError(str(exc) or "timed out") from exc
        return Answer(r.status_code, list(r.headers.items()), r.content)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def is_asgi(app: object) -> bool:
    """Tell an ASGI app (``async def __call__(scope, receive, send)``) from a WSGI one."""
    call = getattr(type(app), "__call__", None)  # noqa: B004 - an async __call__
    return inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(call)


class ASGITransport(Transport):
    """Call an ASGI app in-process; sync callers share one background event loop."""

    def __init__(self, app: Any, path: str = "/hooks/gptimg") -> None:
        self.app = app
        self.path = path
        self.target = f"ASGI app {type(app).__name__}"
        self._loop: LoopThread | None = None

    async def arequest(
        self, method: str, path: str | None, headers: RawHeaders, body: bytes, timeout: float
    ) -> Answer:
        return await asyncio.wait_for(self._call(method, path or self.path, headers, body), timeout)

    async def _call(self, method: str, path: str, headers: RawHeaders, body: bytes) -> Answer:
        raw_path, _, query = path.partition("?")
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        raw.append((b"content-length", str(len(body)).encode()))
        raw.append((b"host", b"testserver"))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": raw_path,
            "raw_path": raw_path.encode(),
            "root_path": "",
            "query_string": query.encode(),
            "headers": raw,
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
            "state": {},
        }
        sent = False
        done = asyncio.Event()
        status = 500
        out_headers: list[tuple[str, str]] = []
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                out_headers.extend(
                    (k.decode("latin-1"), v.decode("latin-1"))
                    for k, v in message.get("headers", [])
                )
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    done.set()

        try:
            await self.app(scope, receive, send)
        finally:
            done.set()
        return Answer(status, out_headers, b"".join(chunks))

    def request(
        self, method: str, path: str | None, headers: RawHeaders, body: bytes, timeout: float
    ) -> Answer:
        if self._loop is None:
            self._loop = LoopThread()
        return self._loop.run(self.arequest(method, path, headers, body, timeout))

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None


class WSGITransport(Transport):
    """Call a WSGI app in-process (a worker thread under async callers)."""

    def __init__(self, app: Callable[..., Iterable[bytes]], path: str = "/hooks/gptimg") -> None:
        self.app = app
        self.path = path
        self.target = f"WSGI app {type(app).__name__}"

    def request(
        self, method: str, path: str | None, headers: RawHeaders, body: bytes, timeout: float
    ) -> Answer:
        raw_path, _, query = (path or self.path).partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": raw_path,
            "QUERY_STRING": query,
            "SERVER_NAME": "testserver",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in headers:
            key = name.upper().replace("-", "_")
            if key == "CONTENT_TYPE":
                environ["CONTENT_TYPE"] = value
            elif key != "CONTENT_LENGTH":
                key = "HTTP_" + key
                # A repeated header reaches WSGI comma-joined, as servers do.
                environ[key] = f"{environ[key]},{value}" if key in environ else value
        started: list[Any] = []

        def start_response(status: str, response_headers: list[tuple[str, str]], *_: Any) -> Any:
            started[:] = [int(status.split(maxsplit=1)[0]), response_headers]
            return lambda data: None

        result = self.app(environ, start_response)
        try:
            payload = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return Answer(started[0], list(started[1]), payload)


class FlaskTransport(Transport):
    """A Flask app through its own ``app.test_client()``."""

    def __init__(self, app: Any, path: str = "/hooks/gptimg") -> None:
        self.client = app.test_client()
        self.path = path
        self.target = f"Flask app {app.name!r}"

    def request(
        self, method: str, path: str | None, headers: RawHeaders, body: bytes, timeout: float
    ) -> Answer:
        r = self.client.open(path or self.path, method=method, data=body, headers=list(headers))
        return Answer(r.status_code, list(r.headers.items()), r.get_data())


class DjangoTransport(Transport):
    """The configured Django project through ``django.test.Client``."""

    def __init__(self, path: str = "/hooks/gptimg") -> None:
        from django.test import Client  # type: ignore[import-untyped,unused-ignore]

        self.client = Client()
        self.path = path
        self.target = "Django test client"

    def request(
        self, method: str, path: str | None, headers: RawHeaders, body: bytes, timeout: float
    ) -> Answer:
        extra: dict[str, str] = {}
        content_type = "application/octet-stream"
        for name, value in headers:
            if name.lower() == "content-type":
                content_type = value
            else:
                extra[name] = value
        r = self.client.generic(
            method, path or self.path, data=body, content_type=content_type, headers=extra
        )
        return Answer(r.status_code, list(r.headers.items()), r.content)


def transport_for(target: Any, path: str = "/hooks/gptimg") -> Transport:
    """Pick the transport: a URL, ``"django"``, a Flask app, an ASGI or a WSGI app."""
    if isinstance(target, Transport):
        return target
    if target == "django":
        return DjangoTransport(path)
    if isinstance(target, str):
        return URLTransport(target)
    if hasattr(target, "test_client") and hasattr(target, "wsgi_app"):
        return FlaskTransport(target, path)
    if is_asgi(target):
        return ASGITransport(target, path)
    if callable(target):
        return WSGITransport(target, path)
    raise TypeError(f"cannot send deliveries to {target!r}: give a URL, an ASGI or a WSGI app")
