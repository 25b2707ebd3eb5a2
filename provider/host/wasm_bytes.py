"""``list<u8>`` across the wasm boundary in bulk, for wasmtime-py's component API. I/O.

Why. wasmtime-py (50.x) lowers and lifts a ``list<u8>`` the way it does any list: one
``wasmtime_component_val_t`` per element, each built or read through ctypes
(``ListType.convert_to_c`` / ``convert_from_c`` in ``wasmtime/component/_types.py``). That
costs about 1.4 µs a byte, so a 4 KiB body takes ~6 ms each way and 1 MiB ~1.5 s.

How. The C value array of a ``list<u8>`` is regular: element *i* is the *i*-th
``wasmtime_component_val_t`` (:data:`VAL_SIZE` bytes), its kind byte at :data:`KIND_OFFSET`
says ``U8`` and its value byte at :data:`VALUE_OFFSET` is the byte. So lowering writes the
bytes by strided slice assignment into a kept array of template values (:class:`_Template`)
and has the library copy that into a list of its own (``wasmtime_component_vallist_new``),
and lifting is the strided read of the value bytes after checking that every kind byte says
``U8``, followed by the library's own ``wasmtime_component_vallist_delete`` (its
``convert_from_c`` frees the list it lifted, and so does this). The offsets and kind codes are
read from wasmtime-py's ctypes declarations at import, never written down here.

Allocation. A 1 MiB list is a 32 MiB value array; :func:`reuse_freed_memory` (which the
local host's ``run`` calls) keeps glibc from mapping fresh pages for every such block. The
template array is kept between calls (it is the speed: measured, a 1 MiB list lowered and freed
in 5.4 ms from it against 12.1 ms filling ``wasmtime_component_vallist_new_uninit``'s list, whose
every element the library first writes as a default value): it grows to the largest list lowered
so far, up to :data:`KEEP` elements (32 MiB), so the local host holds up to that much more after
its first 1 MiB body. A longer list is lowered :data:`KEEP` elements at a time into a list from
``new_uninit``.

Scope. :func:`install` replaces the two ``ListType`` methods with ones that take this path
when the element type is ``u8`` and call the library's own methods (:data:`LIBRARY_LOWER`,
:data:`LIBRARY_LIFT`) for every other element type, so ``list<s8>``, ``list<u32>``,
``list<string>`` and the outer list of a ``list<list<u8>>`` are converted by wasmtime-py as
before (the inner ``list<u8>`` values in bulk).

Pinned. This relies on wasmtime-py internals (the methods it replaces, ``ListType._is_bytes``,
the ctypes declarations, who frees a lifted list), so it is checked at import: a wasmtime
outside :data:`SUPPORTED_MAJOR` (pyproject pins the same range), or a value layout it does not
understand, raises :class:`UnsupportedWasmtime` naming what differs. There is no silent
fallback to the per-byte path: upgrading wasmtime means re-running ``tests/unit/test_wasm_bytes.py``
against it and widening the range.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import threading
from collections.abc import Callable
from typing import Any

from wasmtime import _ffi as ffi
from wasmtime.component import _types

from provider.errors import ProviderError

SUPPORTED_MAJOR = range(50, 51)
"""wasmtime-py major versions whose internals this module was checked against (pyproject: ``>=50,<51``)."""


class UnsupportedWasmtime(ProviderError):
    """The installed wasmtime-py is not one whose ``list<u8>`` internals this module knows."""


def _fail(what: str) -> UnsupportedWasmtime:
    return UnsupportedWasmtime(
        f"provider.host.wasm_bytes cannot convert list<u8> in bulk with wasmtime {WASMTIME_VERSION}: "
        f"{what}. It was written against wasmtime-py {SUPPORTED_MAJOR.start}.x's component internals; "
        "install a wasmtime in that range (pyproject pins it), or check this module against the new "
        "version (tests/unit/test_wasm_bytes.py) and widen SUPPORTED_MAJOR."
    )


WASMTIME_VERSION = importlib.metadata.version("wasmtime")
try:
    _major = int(WASMTIME_VERSION.split(".", 1)[0])
except ValueError:
    raise _fail("its version number does not parse") from None
if _major not in SUPPORTED_MAJOR:
    raise _fail(f"major version {_major} is outside {SUPPORTED_MAJOR.start}…{SUPPORTED_MAJOR.stop - 1}")


def _layout() -> tuple[int, int, int, int, int, int]:
    """Size, kind offset, value offset, and the U8, LIST and BOOL kind codes, from the ctypes declarations."""
    try:
        val: Any = ffi.wasmtime_component_val_t  # Any: ctypes' field descriptors are untyped
        union: Any = ffi.wasmtime_component_valunion_t
        vallist: Any = ffi.wasmtime_component_vallist_t
        kind, of, u8 = val.kind, val.of, union.u8
        codes = [ffi.WASMTIME_COMPONENT_U8.value, ffi.WASMTIME_COMPONENT_LIST.value]
        codes.append(ffi.WASMTIME_COMPONENT_BOOL.value)
        list_fields = [name for name, *_ in vallist._fields_]
        for method in ("convert_to_c", "convert_from_c", "_is_bytes"):
            getattr(_types.ListType, method)
        for function in (
            "wasmtime_component_vallist_new",
            "wasmtime_component_vallist_new_uninit",
            "wasmtime_component_vallist_delete",
        ):
            getattr(ffi, function)
    except AttributeError as exc:
        raise _fail(f"a declaration it relies on is gone ({exc})") from None
    if kind.size != 1 or u8.size != 1:
        raise _fail(f"the kind field is {kind.size} byte(s) and the u8 field {u8.size}, not 1 and 1")
    if list_fields != ["size", "data"]:
        raise _fail(f"wasmtime_component_vallist_t has fields {list_fields}, not size and data")
    if codes[2] != 0:
        raise _fail(f"the BOOL kind is {codes[2]}, not 0 (a zeroed value must be a plain bool)")
    size = ctypes.sizeof(val)
    value = of.offset + u8.offset
    if not 0 <= kind.offset < size or not 0 <= value < size or value == kind.offset:
        raise _fail(f"kind at {kind.offset} and value at {value} do not fit a {size}-byte value")
    return size, kind.offset, value, codes[0], codes[1], codes[2]


VAL_SIZE, KIND_OFFSET, VALUE_OFFSET, U8_KIND, LIST_KIND, BOOL_KIND = _layout()
"""One ``wasmtime_component_val_t``: its size, where its kind and ``u8`` value bytes sit, three kind codes."""

CHUNK = 1 << 14
"""Elements lifted per step: a scratch buffer of ``CHUNK * VAL_SIZE`` bytes (512 KiB) stays in cache."""
KEEP = 1 << 20
"""The most elements the template array grows to (``KEEP * VAL_SIZE`` bytes, 32 MiB): a longer
list is lowered that many at a time."""

_U8 = bytes([U8_KIND])
_TEMPLATE = bytes(KIND_OFFSET) + _U8 + bytes(VAL_SIZE - KIND_OFFSET - 1)
"""One ``u8`` value whose value byte is 0: every element of a lowered ``list<u8>`` follows this pattern."""

LIBRARY_LOWER: Callable[..., None] = _types.ListType.convert_to_c
"""wasmtime-py's own ``ListType.convert_to_c``: other element types, and the reference in the tests."""
LIBRARY_LIFT: Callable[..., Any] = _types.ListType.convert_from_c
"""wasmtime-py's own ``ListType.convert_from_c``."""


def _address(data: Any) -> int:
    """The address a ``wasmtime_component_val_t *`` points to."""
    return ctypes.cast(data, ctypes.c_void_p).value or 0


class _Template:
    """The process's array of template ``u8`` values that lowering writes bytes into, behind a lock.

    One for every thread (a wasm worker holds the lock for the strided write and the library's
    copy, 5 ms for 1 MiB), so the memory it keeps is one array, not one per worker. It grows to
    the largest list lowered so far, at least :data:`CHUNK` and at most :data:`KEEP` elements.
    Only value bytes change in it, so what a previous call left there is overwritten or not
    copied.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.capacity = 0
        self.values = bytearray()
        self.pointer: Any = None
        """``values`` as a ``wasmtime_component_val_t *`` (keeping the buffer exported, so never resized)."""
        self._view: Any = None  # the ctypes view ``pointer`` was cast from

    def reserve(self, count: int) -> None:
        """Make room for ``min(count, KEEP)`` elements (and have an array even for none: the library
        reads a list of none from a pointer all the same). Call with the lock held."""
        if count <= self.capacity and self.pointer is not None:
            return
        capacity = min(KEEP, max(count, 2 * self.capacity, CHUNK))
        values = bytearray(_TEMPLATE) * capacity
        view = (ctypes.c_char * len(values)).from_buffer(values)
        self.pointer = ctypes.cast(view, ctypes.POINTER(ffi.wasmtime_component_val_t))
        self.values, self.capacity, self._view = values, capacity, view


class _Scratch(threading.local):
    """Each thread's buffer for lifting, made once (a wasm worker thread converts call after
    call): room for :data:`CHUNK` values. Making it per call cost more than the conversion
    below ~16 KiB."""

    def __init__(self) -> None:
        self.lift = bytearray(CHUNK * VAL_SIZE)
        self.lift_c = (ctypes.c_char * len(self.lift)).from_buffer(self.lift)


_template = _Template()
_scratch = _Scratch()


def lower_bytes(value: object, ptr: Any) -> None:
    """Store ``value`` (exactly ``bytes``, as wasmtime-py requires) as a ``list<u8>`` at ``ptr``.

    ``ptr`` points to a ``wasmtime_component_val_t``; it then owns a new list, freed by
    whoever frees the value (``wasmtime_component_val_delete``), as with the library's own.

    The bytes go into the template array in one strided slice assignment (a plain C loop in
    bytearray, several times faster than the same through a memoryview of foreign memory), and
    ``wasmtime_component_vallist_new`` copies its first ``len(value)`` elements into the new
    list. A list longer than :data:`KEEP` is filled :data:`KEEP` elements at a time with
    ``memmove`` into a list from ``wasmtime_component_vallist_new_uninit``.
    """
    if not isinstance(value, bytes):
        raise TypeError("expected bytes value")  # wasmtime-py's own check and message
    count = len(value)
    template = _template
    raw = ffi.wasmtime_component_vallist_t()
    with template.lock:
        template.reserve(count)  # before allocating the list: a MemoryError here leaks nothing
        values, step = template.values, VAL_SIZE
        if count <= template.capacity:
            if count:
                values[VALUE_OFFSET : count * step : step] = value
            ffi.wasmtime_component_vallist_new(raw, count, template.pointer)
        else:
            _lower_in_parts(value, raw, values, _address(template.pointer))
    ptr.contents.kind = LIST_KIND
    ptr.contents.of.list = raw


def _lower_in_parts(value: bytes, raw: Any, values: bytearray, source: int) -> None:
    """Fill ``raw`` with a new list of ``value``, longer than the template, a template's length at a time."""
    count, capacity = len(value), len(values) // VAL_SIZE
    ffi.wasmtime_component_vallist_new_uninit(raw, count)
    base = _address(raw.data)
    try:
        for start in range(0, count, capacity):
            n = min(capacity, count - start)
            values[VALUE_OFFSET : n * VAL_SIZE : VAL_SIZE] = value[start : start + n]
            ctypes.memmove(base + start * VAL_SIZE, source, n * VAL_SIZE)
    except BaseException:
        # Never leave the list half filled for whoever deletes it: make them all plain bools.
        ctypes.memset(base, BOOL_KIND, count * VAL_SIZE)
        ffi.wasmtime_component_vallist_delete(ctypes.byref(raw))
        raise


_KINDS = _U8 * CHUNK


def lift_bytes(c: Any) -> bytes:
    """The bytes of the ``list<u8>`` value ``c`` (a ``wasmtime_component_val_t``), whose list this frees.

    :data:`CHUNK` values at a time are copied into the thread's scratch, their kind bytes
    checked to be ``U8`` in one comparison, their value bytes taken in one strided slice.
    """
    if c.kind != LIST_KIND:
        raise UnsupportedWasmtime(f"a list<u8> value arrived as value kind {c.kind}, not LIST ({LIST_KIND})")
    vallist = c.of.list
    try:
        count = vallist.size
        if not count:
            return b""
        base = _address(vallist.data)
        scratch = _scratch
        buffer, target = scratch.lift, scratch.lift_c
        parts = []
        for start in range(0, count, CHUNK):
            n = min(CHUNK, count - start)
            ctypes.memmove(target, base + start * VAL_SIZE, n * VAL_SIZE)
            if buffer[KIND_OFFSET : n * VAL_SIZE : VAL_SIZE] != _KINDS[:n]:
                raise UnsupportedWasmtime("a list<u8> value holds elements whose kind is not U8")
            parts.append(buffer[VALUE_OFFSET : n * VAL_SIZE : VAL_SIZE])
        return b"".join(parts)
    finally:
        ffi.wasmtime_component_vallist_delete(ctypes.byref(vallist))


def _convert_to_c(self: Any, store: Any, val: Any, ptr: Any) -> None:
    """``ListType.convert_to_c``: ``list<u8>`` by :func:`lower_bytes`, others by :data:`LIBRARY_LOWER`."""
    if self._is_bytes():
        lower_bytes(val, ptr)
    else:
        LIBRARY_LOWER(self, store, val, ptr)


def _convert_from_c(self: Any, c: Any) -> Any:
    """``ListType.convert_from_c``: ``list<u8>`` by :func:`lift_bytes`, others by :data:`LIBRARY_LIFT`."""
    if self._is_bytes():
        return lift_bytes(c)
    return LIBRARY_LIFT(self, c)


def install() -> None:
    """Route every ``list<u8>`` conversion in this process through :func:`lower_bytes` / :func:`lift_bytes`.

    Idempotent. Other element types keep wasmtime-py's own conversion.
    """
    _types.ListType.convert_to_c = _convert_to_c  # type: ignore[method-assign]
    _types.ListType.convert_from_c = _convert_from_c  # type: ignore[method-assign]


def installed() -> bool:
    """Whether :func:`install` has run in this process."""
    return _types.ListType.convert_to_c is _convert_to_c and _types.ListType.convert_from_c is _convert_from_c
