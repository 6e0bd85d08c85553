"""A local gptimage2.plus: the REST API and the outbound webhooks, on 127.0.0.1.

An ASGI app that follows the provider's public reference, for tests and local
development. Drive it in-process with ``httpx.ASGITransport(app=provider)`` or serve it
with uvicorn (``gptimg-webhooks provider``). Needs the ``cli`` extra (Starlette, httpx).

::

    provider = LocalProvider(time_scale=600)          # 10 simulated minutes per real second
    key = provider.add_key(credits=100)               # gimg_... (Pro plan)
    hook_id, secret = provider.register_webhook("http://127.0.0.1:8000/hooks/gptimg")
    # ... POST /api/v1/generate with "Authorization: Bearer <key>" ...
    await provider.drain()                            # generations finished, deliveries done
    provider.deliveries                               # every attempt, with its answer

Routes (the reference's, plus what a test needs to see):

- ``POST /api/account/webhooks`` ``{url, events, label}`` (any session cookie) answers
  201 ``{id, secret}``; the ``whsec_`` secret is shown there only.
  ``GET /api/account/webhooks`` lists endpoints, without secrets.
  ``POST /api/account/webhooks/{id}/disable`` and ``/enable`` (enabling also resets the
  failure count); ``DELETE /api/account/webhooks/{id}``.
- ``POST /api/v1/generate``, ``POST /api/v1/upload``, ``GET /api/v1/generations/{id}``
  with ``Authorization: Bearer gimg_...``; every ``/api/v1`` answer carries
  ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` (epoch seconds, wall clock).
- ``PUT /r2/{key}?expires=...&signature=...``: the presigned upload URL (5 minutes).
- ``GET /files/{generationId}/{index}.png`` and ``.webp``: the outputs, real images of
  the announced size.

The outcome of a generation is chosen by markers in its prompt: ``[fail]`` ends
``failed``, ``[block]`` ends ``blocked`` (moderation), ``[slow]`` runs ``slow_runs_for``
instead of ``runs_for``; ``[policy]`` is refused at once with 422. Anything else
succeeds. A failed or blocked generation is refunded: its ``costCredits`` becomes 0 and
the key's balance gets the credits back. Both are announced as ``generation.failed``
(the reference names only ``generation.succeeded`` and ``generation.failed``), with
``data.status`` saying which.

Time: every wait of the provider (queue and run times, webhook retry waits, the
rate-limit window, the upload URL's life) runs on a :class:`Clock`; ``time_scale=600``
runs them 600 times faster. The 5 s timeout of a delivery attempt is real time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import re
import secrets
import string
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gptimg_webhooks._core.events import EVENT_TYPES

from . import _images
from ._transport import ASGITransport, Transport, URLTransport
from .deliveries import random_secret
from .factories import wire_json
from .simulator import Attempt, Clock, Policy, SimEvent, Simulator

__all__ = [
    "ApiCall",
    "Charge",
    "DeliveryAttempt",
    "LocalProvider",
    "WebhookEndpoint",
]

SIZES = ("1024x1024", "1024x1536", "1536x1024")
#: Credits per image by quality: the reference says low costs 1; the rest is this
#: provider's choice.
CREDITS_PER_IMAGE: Mapping[str, float] = {"low": 1, "medium": 2, "high": 4}
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
_ALPHABET = string.ascii_letters + string.digits
_BEARER = re.compile(r"Bearer (gimg_[A-Za-z0-9_-]+)")


def _now_iso() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _rid(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(10))


@dataclass
class _Key:
    key: str
    plan: str
    credits: float
    window_start: float = 0.0
    used: int = 0
    in_flight: int = 0
    #: The most requests of this key that were ever in flight at once.
    peak_in_flight: int = 0


@dataclass
class _Generation:
    id: str
    api_key: str
    prompt: str
    type: str
    size: str
    quality: str
    n: int
    input_image_keys: list[str]
    cost: float
    base_url: str
    status: str = "queued"
    outputs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    created_at: str = field(default_factory=_now_iso)
    completed_at: str | None = None

    def fields(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "status": self.status,
            "outputs": self.outputs,
            "error": self.error,
            "costCredits": self.cost,
            "createdAt": self.created_at,
            "completedAt": self.completed_at,
        }

    def api(self) -> dict[str, Any]:
        """Return the object of ``GET /api/v1/generations/:id``."""
        return {"id": self.id, **self.fields()}

    def webhook(self) -> dict[str, Any]:
        """Return the ``data`` of a webhook event."""
        return {"generationId": self.id, **self.fields()}


@dataclass
class _Upload:
    key: str
    api_key: str
    content_type: str
    size: int
    expires_at: float
    token: str
    data: bytes | None = None


@dataclass
class WebhookEndpoint:
    """A registered webhook; ``simulator`` sends its deliveries and counts its failures."""

    id: str
    url: str
    events: list[str]
    label: str
    secret: str
    simulator: Simulator
    created_at: str = field(default_factory=_now_iso)
    #: Disabled by hand (``/disable``) rather than automatically.
    disabled_by_hand: bool = False

    @property
    def enabled(self) -> bool:
        return not self.simulator.disabled

    @property
    def consecutive_failures(self) -> int:
        return self.simulator.consecutive_failures

    def public(self) -> dict[str, Any]:
        """Return the listing entry: everything but the secret."""
        reason = None
        if not self.enabled:
            reason = "manual" if self.disabled_by_hand else "consecutive_failures"
        return {
            "id": self.id,
            "url": self.url,
            "events": self.events,
            "label": self.label,
            "enabled": self.enabled,
            "disabledReason": reason,
            "consecutiveFailures": self.consecutive_failures,
            "createdAt": self.created_at,
        }


@dataclass(frozen=True)
class DeliveryAttempt:
    """One POST of one webhook delivery, as the provider logged it."""

    endpoint_id: str
    event: str
    generation_id: str | None
    attempt: Attempt

    @property
    def delivery_id(self) -> str | None:
        return self.attempt.delivery_id

    @property
    def number(self) -> int:
        return self.attempt.number

    @property
    def status(self) -> int | None:
        return self.attempt.status

    @property
    def ok(self) -> bool:
        return self.attempt.ok


@dataclass(frozen=True)
class ApiCall:
    """One request to ``/api/v1`` and the provider's answer."""

    method: str
    path: str
    api_key: str | None
    idempotency_key: str | None
    status: int


@dataclass(frozen=True)
class Charge:
    """Credits taken (positive) or refunded (negative) for one generation."""

    api_key: str
    generation_id: str
    credits: float


class _GenerateBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    prompt: str = Field(min_length=1, max_length=4000)
    type: Literal["text2img", "edit"] = "text2img"
    size: Literal["1024x1024", "1024x1536", "1536x1024"] = "1024x1024"
    quality: Literal["low", "medium", "high"] = "medium"
    n: int = Field(default=1, ge=1, le=4)
    inputImageKeys: list[str] = Field(default_factory=list, max_length=4)


class _UploadBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    filename: str = Field(min_length=1, max_length=200)
    contentType: Literal["image/png", "image/jpeg", "image/webp"]
    size: int = Field(ge=1, le=MAX_UPLOAD_BYTES)


class _WebhookBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    url: str = Field(min_length=1, max_length=2048)
    events: list[str] = Field(min_length=1)
    label: str = Field(default="", max_length=200)


class _Answer(Exception):
    """Stop handling a request with this answer."""

    def __init__(
        self, status: int, error: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.response = JSONResponse(
            {"error": error, "message": message}, status, headers=dict(headers or {})
        )


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.body())
    except ValueError:
        raise _Answer(400, "invalid_request", "body: not valid JSON") from None
    if not isinstance(data, dict):
        raise _Answer(400, "invalid_request", "body: expected a JSON object")
    return data


class LocalProvider:
    """The provider's API and webhooks as one ASGI app (``provider`` or ``provider.app``).

    ``time_scale`` (or ``clock``) speeds up every provider wait. A generation stays
    ``queued`` for ``queued_for`` simulated seconds, then ``running`` for ``runs_for``
    (``slow_runs_for`` with ``[slow]``). ``latency`` delays every API answer (holding its
    concurrency slot). ``apps`` maps a URL prefix (``http://receiver.test``) to an ASGI
    app that deliveries to it reach in-process; other URLs are posted with httpx.
    """

    def __init__(
        self,
        *,
        time_scale: float = 1.0,
        clock: Clock | None = None,
        queued_for: float = 1.0,
        runs_for: float = 4.0,
        slow_runs_for: float = 60.0,
        latency: float = 0.0,
        rate_limit: int = 600,
        rate_window: float = 3600.0,
        max_concurrent: int = 5,
        policy: Policy | None = None,
        apps: Mapping[str, Any] | None = None,
    ) -> None:
        self.clock = clock or Clock(time_scale)
        self.queued_for = queued_for
        self.runs_for = runs_for
        self.slow_runs_for = slow_runs_for
        self.latency = latency
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.max_concurrent = max_concurrent
        self.policy = policy or Policy()
        self.apps = dict(apps or {})
        self.keys: dict[str, _Key] = {}
        self.endpoints: dict[str, WebhookEndpoint] = {}
        #: Every webhook delivery attempt, in the order they were answered.
        self.deliveries: list[DeliveryAttempt] = []
        #: Every ``/api/v1`` request, in the order they were answered.
        self.calls: list[ApiCall] = []
        #: Every credit movement: charges and refunds.
        self.charges: list[Charge] = []
        self._generations: dict[str, _Generation] = {}
        self._uploads: dict[str, _Upload] = {}
        self._idempotent: dict[tuple[str, str, str], tuple[int, dict[str, Any]]] = {}
        self._stall: list[float] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()
        self._upload_key = secrets.token_bytes(32)
        self.app = Starlette(
            routes=[
                Route("/api/account/webhooks", self._webhooks, methods=["GET", "POST"]),
                Route("/api/account/webhooks/{id}", self._webhook_delete, methods=["DELETE"]),
                Route(
                    "/api/account/webhooks/{id}/{action:str}",
                    self._webhook_toggle,
                    methods=["POST"],
                ),
                Route("/api/v1/generate", self._api(self._generate), methods=["POST"]),
                Route("/api/v1/upload", self._api(self._upload), methods=["POST"]),
                Route("/api/v1/generations/{id}", self._api(self._generation), methods=["GET"]),
                Route(
                    "/api/v1/{rest:path}",
                    self._api(self._not_found),
                    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                ),
                Route("/r2/{key:path}", self._put_upload, methods=["PUT"]),
                Route("/files/{id}/{index:int}.{ext}", self._file, methods=["GET", "HEAD"]),
            ],
            lifespan=self._lifespan,
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> Any:
        yield
        await self.aclose()

    # -- set-up, for tests -------------------------------------------------------------

    def add_key(self, key: str | None = None, *, credits: float = 1000, plan: str = "pro") -> str:
        """Create an API key (``gimg_...``) with a balance and a plan; return it.

        Plans ``pro`` and ``max`` may use the API; any other (``free``) gets 403.
        """
        key = key or "gimg_" + secrets.token_hex(16)
        if not _BEARER.fullmatch(f"Bearer {key}"):
            raise ValueError("an API key is gimg_ followed by letters, digits, _ or -")
        self.keys[key] = _Key(key, plan, credits)
        return key

    def balance(self, key: str) -> float:
        """Return the key's credits left."""
        return self.keys[key].credits

    def peak_in_flight(self, key: str) -> int:
        """Return the most requests of ``key`` ever handled at once."""
        return self.keys[key].peak_in_flight

    def register_webhook(
        self,
        url: str,
        events: list[str] | None = None,
        label: str = "",
    ) -> tuple[str, str]:
        """Register an endpoint like ``POST /api/account/webhooks``; return ``(id, secret)``."""
        endpoint_id = _rid("wh_")
        secret = random_secret()
        endpoint = WebhookEndpoint(
            endpoint_id,
            url,
            list(events or sorted(EVENT_TYPES)),
            label,
            secret,
            self._simulator(endpoint_id, url, secret),
        )
        self.endpoints[endpoint_id] = endpoint
        return endpoint_id, secret

    def disable(self, endpoint_id: str) -> None:
        """Disable an endpoint by hand: it receives nothing until :meth:`enable`."""
        endpoint = self.endpoints[endpoint_id]
        endpoint.simulator.disabled = True
        endpoint.disabled_by_hand = True

    def enable(self, endpoint_id: str) -> None:
        """Re-enable an endpoint and reset its consecutive failure count."""
        endpoint = self.endpoints[endpoint_id]
        endpoint.simulator.enable()
        endpoint.disabled_by_hand = False

    def stall_next(self, count: int, seconds: float) -> None:
        """Hold the answers of the next ``count`` API requests ``seconds`` (simulated).

        The request is handled first (a generation is created and charged); only its
        answer is late, as when a client times out on a request that went through.
        """
        self._stall.extend([seconds] * count)

    def generation(self, generation_id: str) -> dict[str, Any]:
        """Return a generation as ``GET /api/v1/generations/:id`` shows it."""
        return self._generations[generation_id].api()

    # -- waiting -------------------------------------------------------------------------

    @property
    def busy(self) -> int:
        """Return how many generations and deliveries are still under way."""
        return len(self._tasks)

    async def drain(self, timeout: float = 60.0) -> None:
        """Wait until every generation has finished and every delivery is settled.

        ``timeout`` is real seconds; past it, :class:`TimeoutError`.
        """
        deadline = time.monotonic() + timeout
        while self._tasks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"provider still busy after {timeout:g}s ({self.busy} tasks)")
            await asyncio.sleep(0.01)

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Blocking :meth:`drain`, for a provider served from another thread or loop."""
        deadline = time.monotonic() + timeout
        while self._tasks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"provider still busy after {timeout:g}s ({self.busy} tasks)")
            time.sleep(0.01)

    async def aclose(self) -> None:
        """Cancel what is under way (generations, deliveries) and close the transports."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for endpoint in self.endpoints.values():
            endpoint.simulator.transport.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        with self._lock:
            self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the API ---------------------------------------------------------------------------

    def _rate_headers(self, key: _Key | None) -> dict[str, str]:
        now = self.clock.now()
        if key is None:
            used, reset_in = 0, self.rate_window
        else:
            used, reset_in = key.used, key.window_start + self.rate_window - now
        # Epoch seconds on the wall clock, so any client can wait for them.
        reset = math.ceil(time.time() + max(reset_in, 0.0) / self.clock.scale)
        return {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": str(max(self.rate_limit - used, 0)),
            "X-RateLimit-Reset": str(reset),
        }

    def _api(
        self, handler: Callable[[Request, _Key], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            found = _BEARER.fullmatch(request.headers.get("authorization", ""))
            key = self.keys.get(found.group(1)) if found else None
            idem = request.headers.get("idempotency-key")
            response = await self._guarded(request, key, handler)
            response.headers.update(self._rate_headers(key))
            self.calls.append(
                ApiCall(
                    request.method,
                    request.url.path,
                    key.key if key else None,
                    idem,
                    response.status_code,
                )
            )
            return response

        return endpoint

    async def _guarded(
        self,
        request: Request,
        key: _Key | None,
        handler: Callable[[Request, _Key], Awaitable[Response]],
    ) -> Response:
        if key is None:
            return _Answer(401, "unauthorized", "missing or invalid Bearer gimg_ key").response
        now = self.clock.now()
        if now >= key.window_start + self.rate_window:
            key.window_start, key.used = now, 0
        if key.used >= self.rate_limit:
            wait = (key.window_start + self.rate_window - now) / self.clock.scale
            return _Answer(
                429,
                "rate_limited",
                f"rate limit of {self.rate_limit} requests per hour reached",
                {"Retry-After": str(max(math.ceil(wait), 1))},
            ).response
        if key.in_flight >= self.max_concurrent:
            return _Answer(
                429,
                "rate_limited",
                f"at most {self.max_concurrent} concurrent requests per key",
                {"Retry-After": "1"},
            ).response
        key.used += 1
        key.in_flight += 1
        key.peak_in_flight = max(key.peak_in_flight, key.in_flight)
        try:
            if self.latency:
                await self.clock.sleep(self.latency)
            if key.plan not in ("pro", "max"):
                return _Answer(403, "plan_required", "the API needs a Pro or Max plan").response
            try:
                response = await handler(request, key)
            except _Answer as answer:
                response = answer.response
            if self._stall:
                await self.clock.sleep(self._stall.pop(0))
            return response
        finally:
            key.in_flight -= 1

    def _replayed(self, key: _Key, request: Request) -> Response | None:
        idem = request.headers.get("idempotency-key")
        if not idem:
            return None
        found = self._idempotent.get((key.key, request.url.path, idem))
        if found is None:
            return None
        status, body = found
        if "generationId" in body:
            body = {**body, "status": self._generations[body["generationId"]].status}
        return JSONResponse(body, status, headers={"Idempotent-Replayed": "true"})

    def _remember(self, key: _Key, request: Request, status: int, body: dict[str, Any]) -> None:
        idem = request.headers.get("idempotency-key")
        if idem:
            self._idempotent[(key.key, request.url.path, idem)] = (status, body)

    async def _generate(self, request: Request, key: _Key) -> Response:
        data = await _json_body(request)
        replayed = self._replayed(key, request)
        if replayed is not None:
            return replayed
        try:
            body = _GenerateBody.model_validate(data)
        except ValidationError as exc:
            raise _Answer(400, "invalid_request", _validation_message(exc)) from None
        if body.type == "edit" and not body.inputImageKeys:
            raise _Answer(400, "invalid_request", "inputImageKeys: required when type is 'edit'")
        for image_key in body.inputImageKeys:
            upload = self._uploads.get(image_key)
            if upload is None or upload.api_key != key.key:
                raise _Answer(400, "invalid_request", f"inputImageKeys: unknown key {image_key!r}")
        if "[policy]" in body.prompt:
            raise _Answer(422, "content_policy", "the prompt was blocked by the content policy")
        cost = CREDITS_PER_IMAGE[body.quality] * body.n
        if key.credits < cost:
            raise _Answer(
                402,
                "insufficient_credits",
                f"this generation costs {cost:g} credits; {key.credits:g} left",
            )
        row = _Generation(
            _rid("gen_"),
            key.key,
            body.prompt,
            body.type,
            body.size,
            body.quality,
            body.n,
            list(body.inputImageKeys),
            cost,
            str(request.base_url).rstrip("/"),
        )
        self._generations[row.id] = row
        key.credits -= cost
        self.charges.append(Charge(key.key, row.id, cost))
        answer = {"generationId": row.id, "status": "queued"}
        self._remember(key, request, 202, answer)
        self._spawn(self._run(row))
        return JSONResponse(answer, 202)

    async def _upload(self, request: Request, key: _Key) -> Response:
        data = await _json_body(request)
        replayed = self._replayed(key, request)
        if replayed is not None:
            return replayed
        try:
            body = _UploadBody.model_validate(data)
        except ValidationError as exc:
            raise _Answer(400, "invalid_request", _validation_message(exc)) from None
        object_key = f"uploads/{uuid.uuid4().hex}"
        expires_at = self.clock.now() + 300.0
        token = hmac.new(self._upload_key, object_key.encode(), hashlib.sha256).hexdigest()
        self._uploads[object_key] = _Upload(
            object_key, key.key, body.contentType, body.size, expires_at, token
        )
        base = str(request.base_url).rstrip("/")
        answer = {"url": f"{base}/r2/{object_key}?signature={token}", "key": object_key}
        self._remember(key, request, 200, answer)
        return JSONResponse(answer)

    async def _generation(self, request: Request, key: _Key) -> Response:
        row = self._generations.get(request.path_params["id"])
        if row is None or row.api_key != key.key:
            raise _Answer(404, "not_found", "no such generation")
        return JSONResponse(row.api())

    async def _not_found(self, request: Request, key: _Key) -> Response:
        path = request.url.path
        if path in ("/api/v1/generate", "/api/v1/upload") or path.startswith(
            "/api/v1/generations/"
        ):
            raise _Answer(405, "method_not_allowed", f"{request.method} is not allowed here")
        raise _Answer(404, "not_found", f"no route {request.method} {path}")

    async def _put_upload(self, request: Request) -> Response:
        upload = self._uploads.get(request.path_params["key"])
        token = request.query_params.get("signature", "")
        if upload is None or not hmac.compare_digest(token, upload.token):
            return Response("SignatureDoesNotMatch", 403)
        if self.clock.now() > upload.expires_at:
            return Response("Request has expired", 403)
        if request.headers.get("content-type", "") != upload.content_type:
            return Response(f"Content-Type must be {upload.content_type}", 400)
        body = await request.body()
        if len(body) > upload.size:
            return Response(f"body larger than the announced {upload.size} bytes", 400)
        upload.data = body
        return Response(status_code=200, headers={"ETag": hashlib.md5(body).hexdigest()})  # noqa: S324

    async def _file(self, request: Request) -> Response:
        row = self._generations.get(request.path_params["id"])
        index, ext = request.path_params["index"], request.path_params["ext"]
        if row is None or row.status != "succeeded" or not 0 <= index < len(row.outputs):
            return Response("not found", 404)
        width, height = (int(v) for v in row.size.split("x"))
        digest = hashlib.sha256(f"{row.id}/{index}".encode()).digest()
        rgb = (digest[0], digest[1], digest[2])
        if ext == "png":
            return Response(_images.png(width, height, rgb), media_type="image/png")
        if ext == "webp":
            return Response(_images.webp(width, height, rgb), media_type="image/webp")
        return Response("not found", 404)

    # -- account: webhooks ----------------------------------------------------------------

    def _signed_in(self, request: Request) -> None:
        if not request.cookies:
            raise _Answer(401, "unauthorized", "sign in: a session cookie is required")

    async def _webhooks(self, request: Request) -> Response:
        try:
            self._signed_in(request)
            if request.method == "GET":
                return JSONResponse({"webhooks": [e.public() for e in self.endpoints.values()]})
            try:
                body = _WebhookBody.model_validate(await _json_body(request))
            except ValidationError as exc:
                raise _Answer(400, "invalid_request", _validation_message(exc)) from None
            parts = urlsplit(body.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise _Answer(400, "invalid_request", "url: must be an http(s) URL")
            unknown = sorted(set(body.events) - EVENT_TYPES)
            if unknown:
                raise _Answer(400, "invalid_request", f"events: unknown {', '.join(unknown)}")
            endpoint_id, secret = self.register_webhook(
                body.url, list(dict.fromkeys(body.events)), body.label
            )
            return JSONResponse({"id": endpoint_id, "secret": secret}, 201)
        except _Answer as answer:
            return answer.response

    async def _webhook_toggle(self, request: Request) -> Response:
        try:
            self._signed_in(request)
            endpoint = self.endpoints.get(request.path_params["id"])
            action = request.path_params["action"]
            if endpoint is None or action not in ("enable", "disable"):
                raise _Answer(404, "not_found", "no such webhook")
            (self.enable if action == "enable" else self.disable)(endpoint.id)
            return JSONResponse(endpoint.public())
        except _Answer as answer:
            return answer.response

    async def _webhook_delete(self, request: Request) -> Response:
        try:
            self._signed_in(request)
            endpoint = self.endpoints.pop(request.path_params["id"], None)
            if endpoint is None:
                raise _Answer(404, "not_found", "no such webhook")
            return Response(status_code=204)
        except _Answer as answer:
            return answer.response

    # -- generations and deliveries ------------------------------------------------------

    async def _run(self, row: _Generation) -> None:
        await self.clock.sleep(self.queued_for)
        row.status = "running"
        await self.clock.sleep(self.slow_runs_for if "[slow]" in row.prompt else self.runs_for)
        if "[block]" in row.prompt:
            row.status, row.error = "blocked", "content moderation refused the output"
        elif "[fail]" in row.prompt:
            row.status, row.error = "failed", "the generation failed; credits were refunded"
        else:
            row.status = "succeeded"
            width, height = (int(v) for v in row.size.split("x"))
            row.outputs = [
                {
                    "png": f"{row.base_url}/files/{row.id}/{i}.png",
                    "webp": f"{row.base_url}/files/{row.id}/{i}.webp",
                    "width": width,
                    "height": height,
                }
                for i in range(row.n)
            ]
        if row.status != "succeeded":
            key = self.keys.get(row.api_key)
            if key is not None:
                key.credits += row.cost
            self.charges.append(Charge(row.api_key, row.id, -row.cost))
            row.cost = 0
        row.completed_at = _now_iso()
        event = "generation.succeeded" if row.status == "succeeded" else "generation.failed"
        body = wire_json({"event": event, "data": row.webhook()})
        for endpoint in list(self.endpoints.values()):
            if event in endpoint.events and endpoint.enabled:
                self._spawn(endpoint.simulator.adeliver(body))

    def _transport(self, url: str) -> tuple[Transport, str]:
        parts = urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        for prefix, app in self.apps.items():
            if url.startswith(prefix.rstrip("/")):
                return ASGITransport(app, path), path
        return URLTransport(url), path

    def _simulator(self, endpoint_id: str, url: str, secret: str) -> Simulator:
        transport, path = self._transport(url)

        def log(event: SimEvent) -> None:
            if event.kind == "answered" and event.attempt is not None:
                payload = json.loads(event.report.delivery.body)
                self.deliveries.append(
                    DeliveryAttempt(
                        endpoint_id,
                        payload["event"],
                        payload["data"].get("generationId"),
                        event.attempt,
                    )
                )

        return Simulator(
            transport, secret, path=path, policy=self.policy, clock=self.clock, observer=log
        )
