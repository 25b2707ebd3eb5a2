"""wRPC 0.0.1 value codec: the component-model value encoding (protocol spec §4). Pure.

A :class:`Codec` turns typed Python values into bytes and back. Codecs compose:
:data:`U32`, :data:`STRING`, :data:`BYTES` (``list<u8>``), :class:`OptionOf`,
:class:`ResultOf` and :class:`RecordOf` are enough for every type of
``wasmcloud:messaging@0.2.0``.

Decoding works on a buffer that may hold only a prefix of the value: it then
raises :class:`~provider.errors.IncompleteValue` carrying the total length
needed before a retry can get further. :class:`StreamDecoder` builds on this to
decode a value that arrives split across NATS messages, retrying only once
enough bytes are in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from provider.errors import IncompleteValue, InvalidEncoding, ValueTooLarge

T = TypeVar("T")
E = TypeVar("E")
T_co = TypeVar("T_co", covariant=True)

Buffer = bytes | bytearray | memoryview


class Codec(Protocol[T]):
    """Encodes and decodes one WIT type."""

    @property
    def wit(self) -> str:
        """The WIT spelling of the type, for error messages."""
        ...

    def encode_into(self, value: T, out: bytearray) -> None:
        """Append the encoding of ``value`` to ``out``."""
        ...

    def decode_from(self, buf: memoryview, pos: int) -> tuple[T, int]:
        """Decode a value starting at ``pos``; return it and the position after it.

        Raises :class:`IncompleteValue` if ``buf`` ends first, :class:`InvalidEncoding`
        if the bytes can never be a value of this type.
        """
        ...


def encode(codec: Codec[T], value: T) -> bytes:
    """Encode ``value`` as a whole."""
    out = bytearray()
    codec.encode_into(value, out)
    return bytes(out)


def decode(codec: Codec[T], data: Buffer) -> T:
    """Decode exactly one value that fills ``data``; trailing bytes are an error."""
    with memoryview(data) as view:
        value, end = codec.decode_from(view, 0)
        if end != len(view):
            raise InvalidEncoding(f"{len(view) - end} trailing byte(s) after {codec.wit}", end)
    return value


# --- primitives -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _U32:
    """``u32`` as unsigned LEB128, at most 5 bytes, minimal form on encode."""

    wit: str = "u32"

    def encode_into(self, value: int, out: bytearray) -> None:
        if not 0 <= value <= 0xFFFF_FFFF:
            raise ValueError(f"u32 out of range: {value}")
        _put_uleb(value, out)

    def decode_from(self, buf: memoryview, pos: int) -> tuple[int, int]:
        return _get_u32(buf, pos, self.wit)


def _put_uleb(value: int, out: bytearray) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _get_u32(buf: memoryview, pos: int, what: str) -> tuple[int, int]:
    """LEB128 ``u32``: rejects a 6th byte and, on the 5th, bits beyond 32 (spec §4.1)."""
    size = len(buf)
    if pos < size:
        first = buf[pos]
        if first < 0x80:  # the common case: one byte
            return first, pos + 1
    result = 0
    for i in range(5):
        if pos + i >= size:
            raise IncompleteValue(pos + i + 1, what)
        byte = buf[pos + i]
        if i == 4:
            if byte & 0x80:
                raise InvalidEncoding("varint longer than 5 bytes for u32", pos)
            if byte > 0x0F:
                raise InvalidEncoding("varint overflows u32", pos)
        result |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return result, pos + i + 1
    raise AssertionError("unreachable: the 5th byte always returns or raises")


@dataclass(frozen=True, slots=True)
class _Bytes:
    """``list<u8>``: a ``u32`` count, then the raw bytes."""

    wit: str = "list<u8>"

    def encode_into(self, value: bytes, out: bytearray) -> None:
        _put_uleb(len(value), out)
        out += value

    def decode_from(self, buf: memoryview, pos: int) -> tuple[bytes, int]:
        length, start = _get_u32(buf, pos, self.wit)
        end = start + length
        if end > len(buf):
            raise IncompleteValue(end, self.wit)
        return bytes(buf[start:end]), end


@dataclass(frozen=True, slots=True)
class _String:
    """``string``: a ``u32`` byte length, then UTF-8 (validated)."""

    wit: str = "string"

    def encode_into(self, value: str, out: bytearray) -> None:
        data = value.encode("utf-8")
        _put_uleb(len(data), out)
        out += data

    def decode_from(self, buf: memoryview, pos: int) -> tuple[str, int]:
        length, start = _get_u32(buf, pos, self.wit)
        end = start + length
        if end > len(buf):
            raise IncompleteValue(end, self.wit)
        try:
            return str(buf[start:end], "utf-8"), end
        except UnicodeDecodeError as exc:
            raise InvalidEncoding(f"invalid utf-8 in string: {exc.reason}", start + exc.start) from exc


U32: Codec[int] = _U32()
BYTES: Codec[bytes] = _Bytes()
STRING: Codec[str] = _String()


# --- composites -------------------------------------------------------------------------------


class OptionOf(Generic[T]):
    """``option<T>``: ``00`` for none, ``01`` then ``T`` for some. ``None`` is none."""

    __slots__ = ("inner", "wit")

    def __init__(self, inner: Codec[T]) -> None:
        self.inner = inner
        self.wit = f"option<{inner.wit}>"

    def encode_into(self, value: T | None, out: bytearray) -> None:
        if value is None:
            out.append(0)
        else:
            out.append(1)
            self.inner.encode_into(value, out)

    def decode_from(self, buf: memoryview, pos: int) -> tuple[T | None, int]:
        if pos >= len(buf):
            raise IncompleteValue(pos + 1, self.wit)
        tag = buf[pos]
        if tag == 0:
            return None, pos + 1
        if tag == 1:
            return self.inner.decode_from(buf, pos + 1)
        raise InvalidEncoding(f"invalid option tag {tag:#04x} for {self.wit}", pos)


@dataclass(frozen=True, slots=True)
class Ok(Generic[T]):
    """The ``ok`` case of a WIT ``result``; ``value`` is ``None`` for ``result<_, E>``."""

    value: T


@dataclass(frozen=True, slots=True)
class Err(Generic[E]):
    """The ``err`` case of a WIT ``result``."""

    value: E


class ResultOf(Generic[T, E]):
    """``result<O, E>``: ``00`` then ``O``, or ``01`` then ``E``. ``None`` codec = no payload (``_``)."""

    __slots__ = ("err", "ok", "wit")

    def __init__(self, ok: Codec[T] | None, err: Codec[E] | None) -> None:
        self.ok = ok
        self.err = err
        self.wit = f"result<{ok.wit if ok else '_'}, {err.wit if err else '_'}>"

    def encode_into(self, value: Ok[T] | Err[E], out: bytearray) -> None:
        if isinstance(value, Ok):
            out.append(0)
            if self.ok is not None:
                self.ok.encode_into(value.value, out)
        elif isinstance(value, Err):
            out.append(1)
            if self.err is not None:
                self.err.encode_into(value.value, out)
        else:
            raise TypeError(f"{self.wit} needs Ok(...) or Err(...), got {value!r}")

    def decode_from(self, buf: memoryview, pos: int) -> tuple[Ok[T] | Err[E], int]:
        if pos >= len(buf):
            raise IncompleteValue(pos + 1, self.wit)
        tag = buf[pos]
        if tag == 0:
            if self.ok is None:
                return Ok(None), pos + 1  # type: ignore[arg-type]  # result<_, E>: ok carries no value
            ok, end = self.ok.decode_from(buf, pos + 1)
            return Ok(ok), end
        if tag == 1:
            if self.err is None:
                return Err(None), pos + 1  # type: ignore[arg-type]  # result<O, _>
            err, end = self.err.decode_from(buf, pos + 1)
            return Err(err), end
        raise InvalidEncoding(f"invalid result tag {tag:#04x} for {self.wit}", pos)


class RecordOf(Generic[T]):
    """A WIT record (or a function's parameter tuple): fields concatenated in declaration order.

    ``fields`` pairs each WIT field name with its codec; ``make`` builds the Python value
    from the decoded fields in that order; ``attrs`` names the Python attributes to read
    when encoding (the WIT names in snake_case).
    """

    __slots__ = ("_attrs", "_codecs", "_make", "wit")

    def __init__(
        self,
        wit: str,
        fields: Sequence[tuple[str, Codec[Any]]],
        make: Callable[..., T],
    ) -> None:
        self.wit = wit
        self._codecs = tuple(codec for _, codec in fields)
        self._attrs = tuple(name.replace("-", "_") for name, _ in fields)
        self._make = make

    def encode_into(self, value: T, out: bytearray) -> None:
        for attr, codec in zip(self._attrs, self._codecs, strict=True):
            codec.encode_into(getattr(value, attr), out)

    def decode_from(self, buf: memoryview, pos: int) -> tuple[T, int]:
        values = []
        for codec in self._codecs:
            value, pos = codec.decode_from(buf, pos)
            values.append(value)
        return self._make(*values), pos


# --- streaming --------------------------------------------------------------------------------


def check_limit(exc: IncompleteValue, limit: int | None, wit: str) -> None:
    """Raise :class:`ValueTooLarge` if completing the value would take more than ``limit`` bytes.

    ``exc.needed`` counts every byte a declared length asks for, so a ``list<u8>`` declared
    as 4 GiB is refused at its first chunk, before any of those bytes is buffered.
    """
    if limit is not None and exc.needed > limit:
        raise ValueTooLarge(exc.needed, limit, wit) from exc


class StreamDecoder(Generic[T]):
    """Decodes one value from chunks that arrive one at a time (NATS messages).

    ``feed`` returns ``True`` once the value is complete (then read :attr:`value`).
    Retries are skipped until as many bytes as the last attempt asked for are in, so
    a 1 MiB body split into 4 KiB chunks is decoded about twice, not 256 times.
    With a ``limit``, a value whose declared lengths add up to more than ``limit`` bytes
    raises :class:`ValueTooLarge` as soon as they are seen; the buffer then never holds
    more than ``limit`` plus one chunk.
    """

    __slots__ = ("_buf", "_codec", "_done", "_limit", "_needed", "_value")

    def __init__(self, codec: Codec[T], limit: int | None = None) -> None:
        self._codec = codec
        self._limit = limit
        self._buf = bytearray()
        self._needed = 1
        self._done = False
        self._value: T | None = None

    @property
    def received(self) -> int:
        """How many bytes have been fed so far."""
        return len(self._buf)

    @property
    def value(self) -> T:
        """The decoded value; only valid once :meth:`feed` returned ``True``."""
        if not self._done:
            raise RuntimeError("value read before it was complete")
        return self._value  # type: ignore[return-value]  # set together with _done

    def feed(self, chunk: Buffer) -> bool:
        """Add a chunk; return whether the value is now complete.

        Raises :class:`InvalidEncoding` for bytes that can never decode, including any
        bytes left over after the value, and :class:`ValueTooLarge` past the limit.
        """
        if self._done:
            if chunk:
                raise InvalidEncoding(f"{len(chunk)} byte(s) after a complete {self._codec.wit}", 0)
            return True
        self._buf += chunk
        if len(self._buf) < self._needed:
            return False
        try:
            self._value = decode(self._codec, self._buf)
        except IncompleteValue as exc:
            check_limit(exc, self._limit, self._codec.wit)
            self._needed = exc.needed
            return False
        self._done = True
        self._buf = bytearray()
        return True
