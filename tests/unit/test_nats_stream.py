"""ServerStream splits what a NATS server sends as nats-py's own parser does, only faster.

The examples are the NATS client protocol's own (``MSG``/``HMSG`` with and without a reply
subject, the other operations between them); the differential tests feed the same random
streams, cut at random places, to nats-py's ``Parser`` and compare what each delivers.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from fuzz.harness import read_by_nats_py, split_as_the_connection_does
from provider.errors import NatsProtocolError
from provider.wrpc.protocol import MAX_CONTROL_LINE, MAX_MESSAGE, ServerStream, message_bytes

HEADERS = b"NATS/1.0\r\nsource-id: comp\r\n\r\n"
STREAM = (
    b"MSG foo.bar 9 11\r\nHello World\r\n"
    b"PING\r\n"
    b"MSG foo.bar 9 INBOX.34 11\r\nHello World\r\n"
    b"+OK\r\n"
    b"HMSG foo.bar 9 %d %d\r\n%sHi\r\n"
    % (len(HEADERS), len(HEADERS) + 2, HEADERS)
    + b"HMSG foo.bar 9 INBOX.35 %d %d\r\n%s\r\n" % (len(HEADERS), len(HEADERS), HEADERS)
    + b"MSG _INBOX.a.b.results 3 0\r\n\r\n"
    + b'INFO {"server_id":"x","max_payload":1048576}\r\n'
    + b"-ERR 'Stale Connection'\r\n"
    + b"PONG\r\n"
)
EXPECTED: list[Any] = [
    (9, b"foo.bar", b"", b"Hello World", None),
    b"PING\r\n",
    (9, b"foo.bar", b"INBOX.34", b"Hello World", None),
    b"+OK\r\n",
    (9, b"foo.bar", b"", b"Hi", HEADERS),
    (9, b"foo.bar", b"INBOX.35", b"", HEADERS),
    (3, b"_INBOX.a.b.results", b"", b"", None),
    b'INFO {"server_id":"x","max_payload":1048576}\r\n',
    b"-ERR 'Stale Connection'\r\n",
    b"PONG\r\n",
]


def test_messages_and_other_operations_come_out_in_order() -> None:
    assert ServerStream().feed(STREAM) == EXPECTED


def test_a_message_written_back_reads_as_the_same_message() -> None:
    messages = [op for op in EXPECTED if isinstance(op, tuple)]
    assert ServerStream().feed(b"".join(message_bytes(m) for m in messages)) == messages
    assert message_bytes((9, b"foo.bar", b"INBOX.34", b"Hello World", None)) == (
        b"MSG foo.bar 9 INBOX.34 11\r\nHello World\r\n"
    )


def test_a_stream_cut_anywhere_gives_the_same_operations() -> None:
    for cut in range(len(STREAM) + 1):
        stream = ServerStream()
        assert stream.feed(STREAM[:cut]) + stream.feed(STREAM[cut:]) == EXPECTED, cut
    stream = ServerStream()
    assert [op for i in range(len(STREAM)) for op in stream.feed(STREAM[i : i + 1])] == EXPECTED


def test_blanks_other_than_one_space_separate_fields_as_nats_py_allows() -> None:
    assert ServerStream().feed(b"MSG\tfoo  9\t INBOX 2\r\nhi\r\n") == [(9, b"foo", b"INBOX", b"hi", None)]
    assert ServerStream().feed(b"HMSG\tfoo 9 0 2\r\nhi\r\n") == [(9, b"foo", b"", b"hi", None)]


def test_a_header_block_is_whatever_its_size_says_down_to_one_byte() -> None:
    assert ServerStream().feed(b"HMSG a 1 1 3\r\nXhi\r\n") == [(1, b"a", b"", b"hi", b"X")]


def test_a_body_of_one_mib_in_small_reads_comes_out_once_whole() -> None:
    body = random.Random(1).randbytes(1 << 20)
    data = b"MSG big 1 r %d\r\n%s\r\nPING\r\n" % (len(body), body)
    stream = ServerStream()
    out: list[Any] = []
    for i in range(0, len(data), 32768):
        got = stream.feed(data[i : i + 32768])
        if i + 32768 < len(data) - 8:
            assert got == [], "nothing before the body is whole"
        out.extend(got)
    assert out == [(1, b"big", b"r", body, None), b"PING\r\n"]


@pytest.mark.parametrize(
    "data",
    [
        b"MSG foo 9\r\n",  # too few fields
        b"MSG foo 9 a b 5\r\nhello\r\n",  # too many
        b"MSG foo x 5\r\nhello\r\n",  # sid not a number
        b"MSG foo 9 -5\r\nhello\r\n",  # size not digits
        b"MSG foo 9 5 \r\nhello\r\n",  # a blank at the end of the line
        b"MSG foo 9 r\r5\r\nhello\r\n",  # CR inside the line
        b"MSG foo 9 r\n5\r\nhello\r\n",  # LF inside the line
        b"MSG foo 9 5\r\nhelloXY",  # the body not followed by CRLF
        b"HMSG foo 9 10 5\r\nhello\r\n",  # header size over the total
        b"HMSG foo 9 x 5\r\nhello\r\n",  # header size not digits
        b"HMSG foo 9\r\n",
        b"MSG \r\n",
        b"MSG foo 9 %d\r\n" % (MAX_MESSAGE + 1),  # over the largest max_payload a server allows
    ],
)
def test_malformed_messages_are_refused_by_name(data: bytes) -> None:
    with pytest.raises(NatsProtocolError):
        ServerStream().feed(data)


def test_a_line_that_never_ends_is_refused_past_the_limit() -> None:
    stream = ServerStream()
    assert stream.feed(b"MSG " + b"x" * (MAX_CONTROL_LINE - 10)) == []
    with pytest.raises(NatsProtocolError, match="longer than"):
        stream.feed(b"x" * 20)


def test_unknown_operations_are_handed_on_whole() -> None:
    # nats-py's parser raises "unknown protocol" on these; the stream only splits lines.
    assert ServerStream().feed(b"MSGX a 1 2\r\nHELLO\r\n") == [b"MSGX a 1 2\r\n", b"HELLO\r\n"]


# --- against nats-py's own parser ------------------------------------------------------------


def _token(rng: random.Random) -> bytes:
    alphabet = b"abcxyz0123456789_-*>:@/$"
    return b".".join(
        bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(rng.randint(1, 5))
    )


def _random_stream(rng: random.Random) -> bytes:
    ops = []
    for _ in range(rng.randint(1, 40)):
        kind = rng.random()
        body = rng.randbytes(rng.choice([0, 1, 2, 31, 32, 300, 4096, rng.randint(0, 70_000)]))
        reply = b" " + _token(rng) if rng.random() < 0.6 else b""
        sid = rng.randint(0, 10**6)
        if kind < 0.45:
            ops.append(b"MSG %s %d%s %d\r\n%s\r\n" % (_token(rng), sid, reply, len(body), body))
        elif kind < 0.9:
            # nats-py misreads an HMSG with no reply whose body starts with digits and CRLF (its
            # regex's blanks take CR LF, so the digits look like the size): real header blocks
            # start with NATS/1.0, and an empty one is followed here by a letter.
            head = rng.choice([b"", b"NATS/1.0\r\n\r\n", b"NATS/1.0 503\r\n\r\n", HEADERS])
            head += rng.randbytes(rng.randint(0, 3)) if head else b""
            body = body if head else b"x" + body
            ops.append(
                b"HMSG %s %d%s %d %d\r\n%s%s\r\n"
                % (_token(rng), sid, reply, len(head), len(head) + len(body), head, body)
            )
        else:
            ops.append(rng.choice([b"PING\r\n", b"PONG\r\n", b"+OK\r\n", b"-ERR 'Permissions Violation'\r\n",
                                   b'INFO {"max_payload":1048576,"connect_urls":["a:1"]}\r\n']))  # fmt: skip
    return b"".join(ops)


def _cut(rng: random.Random, data: bytes) -> list[bytes]:
    chunks, i = [], 0
    while i < len(data):
        n = rng.choice([1, 2, 7, 100, 32768, rng.randint(1, 100_000)])
        chunks.append(data[i : i + n])
        i += n
    return chunks


def test_random_streams_cut_at_random_split_as_nats_py_splits_them() -> None:
    rng = random.Random(20261202)
    for _ in range(150):
        data = _random_stream(rng)
        chunks = _cut(rng, data)
        assert split_as_the_connection_does(chunks) == read_by_nats_py(data)
