from __future__ import annotations

import io
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gptimg_webhooks import InvalidHeaders, InvalidPayload, PayloadTooLarge
from gptimg_webhooks._core.body import BodyIncomplete, BodyReader, is_chunked, refuse


class Stream:
    """A byte stream that records every read size it is asked for."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        self.data = io.BytesIO(data)
        self.asked: list[int] = []
        self.fail_after = fail_after

    def read(self, n: int) -> bytes:
        self.asked.append(n)
        if self.fail_after is not None and self.data.tell() >= self.fail_after:
            raise OSError("connection reset")
        return self.data.read(n)


@given(st.binary(max_size=300), st.integers(1, 64))
def test_a_body_under_the_cap_is_returned_whole_whatever_the_chunking(
    body: bytes, size: int
) -> None:
    reader = BodyReader(300)
    reader.check_length(None, "chunked")
    for i in range(0, len(body), size):
        reader.feed(body[i : i + size])
    assert reader.done() == body


@given(st.integers(0, 50), st.integers(1, 20))
def test_a_body_is_refused_as_soon_as_it_passes_the_cap(extra: int, size: int) -> None:
    limit = 100
    body = b"x" * (limit + 1 + extra)
    reader = BodyReader(limit)
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    crossing = -(-(limit + 1) // size) - 1  # index of the chunk that passes the cap
    for chunk in chunks[:crossing]:
        reader.feed(chunk)
    with pytest.raises(PayloadTooLarge):
        reader.feed(chunks[crossing])


def test_a_body_of_exactly_the_cap_is_accepted() -> None:
    reader = BodyReader(10)
    reader.feed(b"0123456789")
    assert reader.done() == b"0123456789"


def test_a_declared_length_over_the_cap_is_refused_before_reading() -> None:
    reader = BodyReader(100)
    with pytest.raises(PayloadTooLarge):
        reader.check_length("101")
    reader.check_length(b"100")
    assert reader.expected == 100


@pytest.mark.parametrize("value", ["-1", "1e3", "0x10", "ten", "\uff11\uff12"])
def test_a_malformed_content_length_is_invalid_headers(value: str) -> None:
    with pytest.raises(InvalidHeaders):
        BodyReader(100).check_length(value)


def test_reading_stops_at_one_byte_past_the_cap() -> None:
    stream = Stream(b"x" * 10_000)
    with pytest.raises(PayloadTooLarge):
        BodyReader(1000).read_from(stream.read, chunk_size=300)
    assert sum(stream.asked) == 1001
    assert stream.data.tell() == 1001


def test_reading_never_passes_the_declared_length() -> None:
    stream = Stream(b'{"a":1}NEXT REQUEST')
    reader = BodyReader(1000)
    reader.check_length("7")
    assert reader.read_from(stream.read) == b'{"a":1}'
    assert stream.data.read() == b"NEXT REQUEST"


def test_bytes_fed_past_the_declared_length_are_not_body() -> None:
    reader = BodyReader(1000)
    reader.check_length("3")
    reader.feed(b"abcdef")
    assert reader.done() == b"abc"


def test_a_body_short_of_its_declared_length_is_incomplete() -> None:
    reader = BodyReader(1000)
    reader.check_length("50")
    with pytest.raises(BodyIncomplete) as caught:
        reader.read_from(Stream(b"only twenty bytes...").read)
    assert isinstance(caught.value, InvalidPayload)
    assert caught.value.status == 400


def test_a_stream_that_fails_mid_body_is_incomplete_not_an_escaping_error() -> None:
    reader = BodyReader(1000)
    reader.check_length(None, "chunked")
    with pytest.raises(BodyIncomplete, match="OSError"):
        reader.read_from(Stream(b"x" * 500, fail_after=100).read, chunk_size=50)


def test_a_chunked_body_runs_to_the_end_of_the_stream() -> None:
    reader = BodyReader(1000)
    reader.check_length(None, "gzip, chunked")
    assert reader.expected is None
    assert reader.read_from(Stream(b"z" * 700).read, chunk_size=64) == b"z" * 700


def test_chunked_wins_over_a_content_length() -> None:
    reader = BodyReader(1000)
    reader.check_length("5000", "chunked")
    assert reader.expected is None


def test_no_length_on_a_stream_the_server_does_not_end_means_no_body() -> None:
    stream = Stream(b"would block on a real socket")
    reader = BodyReader(1000)
    reader.check_length(None, None, stream_ends=False)
    assert reader.read_from(stream.read) == b""
    assert stream.asked == []


def test_no_length_on_a_stream_the_server_ends_is_read_to_its_end() -> None:
    reader = BodyReader(1000)
    reader.check_length("", None, stream_ends=True)
    assert reader.read_from(Stream(b"abc").read) == b"abc"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("chunked", True),
        (b"Chunked", True),
        ("gzip, chunked", True),
        ("chunked, gzip", False),
        ("identity", False),
        ("", False),
        (None, False),
    ],
)
def test_is_chunked_reads_the_last_transfer_coding(
    value: str | bytes | None, expected: bool
) -> None:
    assert is_chunked(value) is expected


def test_refuse_logs_a_too_large_body_at_warning_and_a_lost_one_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="gptimg_webhooks"):
        big = refuse(PayloadTooLarge("too big"), "d" * 500)
        gone = refuse(BodyIncomplete("client left"))
    assert (big.status, gone.status) == (413, 400)
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]
    assert "d" * 81 not in caplog.text  # the unsigned delivery id is bounded
