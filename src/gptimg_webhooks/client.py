"""A typed client for the gptimage2.plus REST API, sync and async (the ``client`` extra).

::

    from gptimg_webhooks.client import Client

    with Client() as api:                       # key from GPTIMG_API_KEY
        submitted = api.generate("a lighthouse at dusk, 35mm", n=2)
        generation = api.get_generation(submitted.generation_id)   # a gptimg_webhooks.Generation

It keeps within the key's limits: at most ``max_concurrency`` (5) requests at once, and
no request sent while the ``X-RateLimit-*`` headers say the hour's quota (600) is spent,
until the window resets. A 429 is waited out by its ``Retry-After``; a timeout, a lost
connection or a 502/503/504 is retried with a short backoff; both at most
``max_retries`` times, and never a single wait longer than ``max_wait`` seconds. Every
POST carries an ``Idempotency-Key`` (a fresh uuid4 unless given), the same one on each
retry, so a retried call never charges twice.

Errors, all :class:`~gptimg_webhooks.WebhookError`::

    ApiError                        any answer the call could not use
    ├── InvalidRequest         400  the body failed validation (``message`` says why)
    ├── Unauthorized           401  missing or invalid key
    ├── InsufficientCredits    402  not enough credits, or the monthly limit reached
    ├── PlanRequired           403  the API needs a Pro or Max plan
    ├── NotFound               404  no such generation
    ├── ContentPolicy          422  the prompt was refused
    ├── RateLimited            429  still limited after the allowed waits (``retry_after``)
    └── ApiUnavailable         503  no usable answer: network, timeouts, 5xx, not JSON
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._core.errors import ConfigurationError, WebhookError
from ._core.events import Generation

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_BASE_URL",
    "ApiError",
    "ApiUnavailable",
    "AsyncClient",
    "Client",
    "ContentPolicy",
    "Generation",
    "InsufficientCredits",
    "InvalidRequest",
    "NotFound",
    "PlanRequired",
    "RateLimited",
    "Submitted",
    "Unauthorized",
    "Upload",
]

DEFAULT_BASE_URL = "https://gptimage2.plus/api/v1"
API_KEY_ENV = "GPTIMG_API_KEY"
_RETRY_STATUSES = frozenset({502, 503, 504})

M = TypeVar("M", bound=BaseModel)


class ApiError(WebhookError):
    """The API answered something the call cannot use; ``status`` is the usual code."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "api_error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        body: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        #: The status actually received (None when there was no answer).
        self.status_code = status_code
        #: The decoded answer body, when there was one.
        self.body = body
        #: Seconds the API asked to wait (429 only).
        self.retry_after = retry_after


class InvalidRequest(ApiError):
    """400: the body failed validation; ``message`` holds the API's reason."""

    status = 400
    code = "invalid_request"


class Unauthorized(ApiError):
    """401: the Bearer key is missing or invalid."""

    status = 401
    code = "unauthorized"


class InsufficientCredits(ApiError):
    """402: not enough credits, or the monthly compute limit is reached."""

    status = 402
    code = "insufficient_credits"


class PlanRequired(ApiError):
    """403: the API needs a Pro or Max plan."""

    status = 403
    code = "plan_required"


class NotFound(ApiError):
    """404: no such generation (or not this key's)."""

    status = 404
    code = "not_found"


class ContentPolicy(ApiError):
    """422: the content policy refused the prompt."""

    status = 422
    code = "content_policy"


class RateLimited(ApiError):
    """429: still rate limited after the allowed waits; ``retry_after`` says how long."""

    status = 429
    code = "rate_limited"


class ApiUnavailable(ApiError):
    """No usable answer: a network error, timeouts, a 5xx, or a body that is not JSON."""

    status = 503
    code = "api_unavailable"


_ERRORS: dict[int, type[ApiError]] = {
    cls.status: cls
    for cls in (
        InvalidRequest,
        Unauthorized,
        InsufficientCredits,
        PlanRequired,
        NotFound,
        ContentPolicy,
        RateLimited,
    )
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)


class Submitted(_Model):
    """The answer to ``generate``: the new generation's id and status (``queued``)."""

    generation_id: str = Field(alias="generationId")
    status: str


class Upload(_Model):
    """The answer to ``upload``: a presigned PUT ``url`` (5 minutes) and the ``key``."""

    url: str
    key: str


class _Limits:
    """What the API's headers said about the quota; thread safe, shared by the requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.limit: int | None = None
        self.remaining: int | None = None
        self.reset: float | None = None
        self.in_flight = 0

    def reserve(self, now: float) -> float:
        """Take one request from the quota; else return the seconds until it resets."""
        with self._lock:
            if self.reset is not None and now >= self.reset:
                # A new window: the whole limit, until an answer says when it ends.
                self.remaining, self.reset = self.limit, None
            if self.remaining is not None and self.remaining <= 0 and self.reset is not None:
                return self.reset - now
            if self.remaining is not None:
                self.remaining -= 1
            self.in_flight += 1
            return 0.0

    def release(self, headers: Mapping[str, str] | None) -> None:
        """Give the slot back and learn from the answer's ``X-RateLimit-*`` headers."""
        with self._lock:
            self.in_flight -= 1
            if headers is None:
                return
            try:
                remaining = int(headers["x-ratelimit-remaining"])
                reset = float(headers["x-ratelimit-reset"])
                self.limit = int(headers["x-ratelimit-limit"])
            except (KeyError, ValueError):
                return
            # The other requests in flight may not be counted in this answer yet.
            estimate = remaining - self.in_flight
            if self.reset is None or self.remaining is None or reset > self.reset:
                self.remaining, self.reset = estimate, reset
            else:
                self.remaining = min(self.remaining, estimate)


@dataclass(frozen=True)
class _Step:
    """What to do after one attempt: return the answer, wait and retry, or raise."""

    kind: Literal["done", "retry", "raise"]
    wait: float = 0.0
    error: ApiError | None = None


def _decode(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _retry_after(value: str | None) -> float:
    if not value:
        return 1.0
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 1.0
    return max(when.timestamp() - time.time(), 0.0)


def _error_for(response: httpx.Response) -> ApiError:
    body = _decode(response)
    status = response.status_code
    message = None
    if isinstance(body, dict):
        message = body.get("message") or body.get("error")
    text = str(message) if message else f"HTTP {status}"
    cls = _ERRORS.get(status, ApiUnavailable if status >= 500 else ApiError)
    retry = _retry_after(response.headers.get("retry-after")) if status == 429 else None
    return cls(f"{status}: {text}", status_code=status, body=body, retry_after=retry)


class _Base:
    """Settings and decisions shared by :class:`Client` and :class:`AsyncClient`."""

    def __init__(
        self,
        api_key: str | None,
        base_url: str,
        timeout: float,
        max_concurrency: int,
        max_retries: int,
        max_wait: float,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if not key or not key.strip():
            raise ConfigurationError(f"no API key: pass api_key=... or set {API_KEY_ENV}")
        if not key.startswith("gimg_"):
            raise ConfigurationError("an API key starts with gimg_ (see /account/api)")
        if max_concurrency < 1 or max_retries < 0 or max_wait < 0:
            raise ConfigurationError(
                "max_concurrency must be at least 1, max_retries and max_wait at least 0"
            )
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.max_wait = max_wait
        self.limits = _Limits()
        self._key = key.strip()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def _headers(self, method: str, idempotency_key: str | None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._key}", "Accept": "application/json"}
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        return headers

    def _quota_wait(self, wait: float) -> None:
        if wait > self.max_wait:
            raise RateLimited(
                f"the hourly quota is spent; it resets in {wait:.0f}s (over max_wait)",
                status_code=None,
                retry_after=wait,
            )

    def _after(self, attempt: int, response: httpx.Response | None, exc: Exception | None) -> _Step:
        last = attempt >= self.max_retries
        if response is None:
            error: ApiError = ApiUnavailable(f"no answer from {self.base_url}: {exc!r}")
            if last:
                return _Step("raise", error=error)
            return _Step("retry", min(0.5 * 2**attempt, self.max_wait))
        status = response.status_code
        if status == 429:
            error = _error_for(response)
            wait = error.retry_after or 1.0
            if last or wait > self.max_wait:
                return _Step("raise", error=error)
            return _Step("retry", wait)
        if status in _RETRY_STATUSES:
            if last:
                return _Step("raise", error=_error_for(response))
            return _Step("retry", min(0.5 * 2**attempt, self.max_wait))
        if status >= 400:
            return _Step("raise", error=_error_for(response))
        return _Step("done")

    @staticmethod
    def _parse(response: httpx.Response, model: type[M]) -> M:
        body = _decode(response)
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            raise ApiUnavailable(
                f"unexpected answer to {response.request.url.path}: {exc.errors()[0]['msg']}",
                status_code=response.status_code,
                body=body,
            ) from None

    @staticmethod
    def _generate_body(
        prompt: str,
        type: str | None,
        size: str | None,
        quality: str | None,
        n: int | None,
        input_image_keys: list[str] | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": prompt}
        for name, value in (
            ("type", type),
            ("size", size),
            ("quality", quality),
            ("n", n),
            ("inputImageKeys", input_image_keys),
        ):
            if value is not None:
                body[name] = value
        return body


class Client(_Base):
    """Blocking client; thread safe (the limits are shared by every thread using it)."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 30.0,
        max_concurrency: int = 5,
        max_retries: int = 3,
        max_wait: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(api_key, base_url, timeout, max_concurrency, max_retries, max_wait)
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._http = httpx.Client(timeout=timeout, transport=transport)

    def _request(
        self,
        method: str,
        path: str,
        json: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        headers = self._headers(method, idempotency_key)
        for attempt in range(self.max_retries + 1):
            response: httpx.Response | None = None
            error: Exception | None = None
            with self._slots:
                for _ in range(self.max_retries + 1):
                    wait = self.limits.reserve(time.time())
                    if not wait:
                        break
                    self._quota_wait(wait)
                    time.sleep(wait)
                else:
                    raise RateLimited("the hourly quota is still spent after waiting")
                try:
                    response = self._http.request(
                        method, self.base_url + path, json=json, headers=headers
                    )
                except httpx.TransportError as exc:
                    error = exc
                finally:
                    self.limits.release(response.headers if response is not None else None)
            step = self._after(attempt, response, error)
            if step.kind == "done" and response is not None:
                return response
            if step.kind == "raise" and step.error is not None:
                raise step.error
            time.sleep(step.wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def generate(
        self,
        prompt: str,
        *,
        type: str | None = None,
        size: str | None = None,
        quality: str | None = None,
        n: int | None = None,
        input_image_keys: list[str] | None = None,
        idempotency_key: str | None = None,
    ) -> Submitted:
        """Submit a generation (``POST /generate``); unset options take the API's defaults."""
        body = self._generate_body(prompt, type, size, quality, n, input_image_keys)
        return self._parse(self._request("POST", "/generate", body, idempotency_key), Submitted)

    def upload(
        self, filename: str, content_type: str, size: int, *, idempotency_key: str | None = None
    ) -> Upload:
        """Ask for a presigned PUT URL for an input image (``POST /upload``)."""
        body = {"filename": filename, "contentType": content_type, "size": size}
        return self._parse(self._request("POST", "/upload", body, idempotency_key), Upload)

    def put_upload(self, upload: Upload, data: bytes, content_type: str) -> None:
        """PUT the image bytes to the presigned URL of :meth:`upload`."""
        try:
            response = self._http.put(
                upload.url, content=data, headers={"Content-Type": content_type}
            )
        except httpx.TransportError as exc:
            raise ApiUnavailable(f"upload failed: {exc!r}") from exc
        if response.status_code >= 300:
            raise _error_for(response)

    def get_generation(self, generation_id: str) -> Generation:
        """Return a generation (``GET /generations/:id``) as the events' own model."""
        return self._parse(
            self._request("GET", f"/generations/{quote(generation_id, safe='')}"), Generation
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """Async client; share one per event loop (the limits are per client)."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 30.0,
        max_concurrency: int = 5,
        max_retries: int = 3,
        max_wait: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(api_key, base_url, timeout, max_concurrency, max_retries, max_wait)
        self._slots = asyncio.Semaphore(max_concurrency)
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport)

    async def _request(
        self,
        method: str,
        path: str,
        json: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        headers = self._headers(method, idempotency_key)
        for attempt in range(self.max_retries + 1):
            response: httpx.Response | None = None
            error: Exception | None = None
            async with self._slots:
                for _ in range(self.max_retries + 1):
                    wait = self.limits.reserve(time.time())
                    if not wait:
                        break
                    self._quota_wait(wait)
                    await asyncio.sleep(wait)
                else:
                    raise RateLimited("the hourly quota is still spent after waiting")
                try:
                    response = await self._http.request(
                        method, self.base_url + path, json=json, headers=headers
                    )
                except httpx.TransportError as exc:
                    error = exc
                finally:
                    self.limits.release(response.headers if response is not None else None)
            step = self._after(attempt, response, error)
            if step.kind == "done" and response is not None:
                return response
            if step.kind == "raise" and step.error is not None:
                raise step.error
            await asyncio.sleep(step.wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def generate(
        self,
        prompt: str,
        *,
        type: str | None = None,
        size: str | None = None,
        quality: str | None = None,
        n: int | None = None,
        input_image_keys: list[str] | None = None,
        idempotency_key: str | None = None,
    ) -> Submitted:
        """Submit a generation (``POST /generate``); unset options take the API's defaults."""
        body = self._generate_body(prompt, type, size, quality, n, input_image_keys)
        response = await self._request("POST", "/generate", body, idempotency_key)
        return self._parse(response, Submitted)

    async def upload(
        self, filename: str, content_type: str, size: int, *, idempotency_key: str | None = None
    ) -> Upload:
        """Ask for a presigned PUT URL for an input image (``POST /upload``)."""
        body = {"filename": filename, "contentType": content_type, "size": size}
        return self._parse(await self._request("POST", "/upload", body, idempotency_key), Upload)

    async def put_upload(self, upload: Upload, data: bytes, content_type: str) -> None:
        """PUT the image bytes to the presigned URL of :meth:`upload`."""
        try:
            response = await self._http.put(
                upload.url, content=data, headers={"Content-Type": content_type}
            )
        except httpx.TransportError as exc:
            raise ApiUnavailable(f"upload failed: {exc!r}") from exc
        if response.status_code >= 300:
            raise _error_for(response)

    async def get_generation(self, generation_id: str) -> Generation:
        """Return a generation (``GET /generations/:id``) as the events' own model."""
        response = await self._request("GET", f"/generations/{quote(generation_id, safe='')}")
        return self._parse(response, Generation)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
