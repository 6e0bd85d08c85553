"""Read a request body under the size cap, whatever its framing: the one copy every adapter uses.

Sans-I/O: :class:`BodyReader` is told the declared framing (``Content-Length``,
``Transfer-Encoding``) and fed the body as it arrives, chunk by chunk, into one growing
``bytearray``; it never asks for more than the cap plus one byte, nor past the declared
length. An adapter either feeds it messages (ASGI) or hands it a ``read(n)`` callable of its
server's stream (WSGI) through :meth:`BodyReader.read_from`.

::

    reader = BodyReader(hooks.max_body_size)
    reader.check_length(content_length, transfer_encoding)   # PayloadTooLarge before reading
    body = reader.read_from(stream.read)                      # or feed(chunk)... then done()
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .errors import InvalidHeaders, InvalidPayload, PayloadTooLarge, RequestRejected
from .protocol import Response, error_response

__all__ = [
    "CHUNK_SIZE",
    "BodyIncomplete",
    "BodyReader",
    "is_chunked",
    "refuse",
]

logger = logging.getLogger("gptimg_webhooks")

#: The most a single ``read(n)`` asks the server's stream for.
CHUNK_SIZE = 64 * 1024


class BodyIncomplete(InvalidPayload):
    """The body ended early or could not be read: the client went away mid-body."""


def is_chunked(transfer_encoding: str | bytes | None) -> bool:
    """Tell whether the last transfer coding is ``chunked``: the body then ends with the stream."""
    if not transfer_encoding:
        return False
    if isinstance(transfer_encoding, bytes):
        transfer_encoding = transfer_encoding.decode("latin-1")
    return transfer_encoding.rsplit(",", 1)[-1].strip().lower() == "chunked"


class BodyReader:
    """Accumulate one request body, refusing it as soon as it passes ``limit`` bytes."""

    __slots__ = ("_buffer", "expected", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("limit must not be negative")
        self.limit = limit
        #: The declared ``Content-Length``, or None when the body runs to the end of the stream.
        self.expected: int | None = None
        self._buffer = bytearray()

    @property
    def size(self) -> int:
        """Return how many body bytes were kept so far."""
        return len(self._buffer)

    def check_length(
        self,
        content_length: str | bytes | None,
        transfer_encoding: str | bytes | None = None,
        *,
        stream_ends: bool = True,
    ) -> None:
        """Take the declared framing; raise :class:`PayloadTooLarge` before any byte is read.

        ``chunked`` wins over a ``Content-Length`` (RFC 9112 6.3): the body then runs to the
        end of the de-chunked stream. With neither, the body runs to the end of the stream
        only when the server ends it there (``stream_ends``: every ASGI server, a WSGI server
        that sets ``wsgi.input_terminated``); otherwise it is empty, as HTTP/1.1 says, since
        reading would wait on the open connection. A length that is not a plain decimal is
        refused as :class:`InvalidHeaders` (servers normally refuse it before the app runs).
        """
        if is_chunked(transfer_encoding):
            self.expected = None  # best effort where the server does not end the stream
        elif content_length is None or content_length in ("", b""):
            self.expected = None if stream_ends else 0
        else:
            if isinstance(content_length, bytes):
                content_length = content_length.decode("latin-1")
            text = content_length.strip()
            if not text.isascii() or not text.isdigit():
                raise InvalidHeaders("Content-Length is not a decimal number")
            declared = int(text)
            if declared > self.limit:
                raise PayloadTooLarge(
                    f"Content-Length {declared} is over the {self.limit} byte cap"
                )
            self.expected = declared

    @property
    def complete(self) -> bool:
        """Return True once the declared length has arrived (never, without one)."""
        return self.expected is not None and len(self._buffer) >= self.expected

    def want(self, chunk_size: int = CHUNK_SIZE) -> int:
        """Return how many bytes to ask for next; 0 once the declared length has arrived.

        Never more than the cap plus one byte in total (one byte past the cap is enough to
        know the body is too large) and never past the declared length (PEP 3333: a WSGI
        application must not read past ``CONTENT_LENGTH``).
        """
        room = self.limit + 1 - len(self._buffer)
        if self.expected is not None:
            room = min(room, self.expected - len(self._buffer))
        return max(0, min(chunk_size, room))

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append a chunk; raise :class:`PayloadTooLarge` once the body passes the cap.

        Bytes past a declared length are not part of the body and are dropped.
        """
        if self.expected is not None:
            chunk = chunk[: max(0, self.expected - len(self._buffer))]
        if len(self._buffer) + len(chunk) > self.limit:
            self._buffer = bytearray()
            raise PayloadTooLarge(f"body larger than the {self.limit} byte cap")
        self._buffer += chunk

    def done(self) -> bytes:
        """Return the whole body; raise :class:`BodyIncomplete` if it fell short of its length."""
        if self.expected is not None and len(self._buffer) < self.expected:
            raise BodyIncomplete(
                f"body ended after {len(self._buffer)} of its {self.expected} declared bytes"
            )
        body = bytes(self._buffer)
        self._buffer = bytearray()
        return body

    def read_from(self, read: Callable[[int], bytes], chunk_size: int = CHUNK_SIZE) -> bytes:
        """Read the body through ``read(n)`` until it ends, is complete or passes the cap.

        Any error of the stream (a client that went away, broken chunk framing) becomes
        :class:`BodyIncomplete`: the caller answers 400 instead of letting it escape as a 500.
        """
        # Each pass either ends or keeps at least one byte, and at most limit + 1 bytes are
        # ever asked for, so the loop is bounded by the cap.
        while (wanted := self.want(chunk_size)) > 0:
            try:
                chunk = read(wanted)
            except Exception as exc:  # the server's stream: any failure means no body
                raise BodyIncomplete(
                    f"body unreadable after {len(self._buffer)} bytes ({type(exc).__name__})"
                ) from exc
            if not chunk:
                break
            self.feed(chunk)
        return self.done()


def refuse(exc: RequestRejected, delivery_id: str = "") -> Response:
    """Log a body refused before the core saw it and return its answer.

    An incomplete body is logged at INFO: the client has usually gone and hears nothing.
    """
    level = logging.INFO if isinstance(exc, BodyIncomplete) else logging.WARNING
    delivery_id = delivery_id[:80]  # unsigned: only ever logged with %r, and bounded
    logger.log(level, "rejected %s: %s (delivery %r)", exc.code, exc, delivery_id)
    return error_response(exc)
