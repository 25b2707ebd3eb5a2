"""provider.host.wasm_bytes: ``list<u8>`` in bulk, the same bytes as wasmtime-py's own conversion.

The reference is wasmtime-py itself (``LIBRARY_LOWER`` / ``LIBRARY_LIFT``, the methods the
module replaces): both lower the same bytes and the C value arrays are compared byte for
byte, then each lift reads the other's array. Round trips go through real wasmtime calls on
a small component written in WAT below, both directions: an export (the host lowers the
argument and lifts the result) and an import called by the guest (the host lifts the
argument and lowers the result).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from wasmtime import _ffi as ffi
from wasmtime import component as wc

from provider.errors import ProviderError
from provider.host import wasm_bytes
from provider.host.wasm_bytes import LIBRARY_LIFT, LIBRARY_LOWER, UnsupportedWasmtime, lift_bytes, lower_bytes

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20

# One core function "echo" returns the list it was given (its pointer and length), so it
# echoes a list of any element type; "call-host" passes its list to the imported host-echo
# and returns that one's answer. A bump allocator serves the canonical ABI's realloc; OPTIONS
# names it and the memory for every lift and lower.
WAT = r"""
(component
  (import "host-echo" (func $host (param "b" (list u8)) (result (list u8))))
  (core module $libc
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 16))
    (func (export "realloc") (param i32 i32) (param $align i32) (param $size i32) (result i32)
      (local $at i32)
      (local.set $at (i32.and (i32.add (global.get $bump) (i32.sub (local.get $align) (i32.const 1)))
                              (i32.sub (i32.const 0) (local.get $align))))
      (global.set $bump (i32.add (local.get $at) (local.get $size)))
      (block $fits
        (br_if $fits (i32.le_u (global.get $bump) (i32.shl (memory.size) (i32.const 16))))
        (drop (memory.grow (i32.add (i32.const 1)
          (i32.shr_u (i32.sub (global.get $bump) (i32.shl (memory.size) (i32.const 16))) (i32.const 16))))))
      (local.get $at)))
  (core instance $libc (instantiate $libc))
  (core func $host-lowered (canon lower (func $host)
    OPTIONS))
  (core module $main
    (import "libc" "memory" (memory 1))
    (import "host" "echo" (func $host-echo (param i32 i32 i32)))
    (func (export "echo") (param $ptr i32) (param $len i32) (result i32)
      (i32.store (i32.const 0) (local.get $ptr))
      (i32.store (i32.const 4) (local.get $len))
      (i32.const 0))
    (func (export "call-host") (param $ptr i32) (param $len i32) (result i32)
      (call $host-echo (local.get $ptr) (local.get $len) (i32.const 8))
      (i32.const 8)))
  (core instance $main (instantiate $main
    (with "libc" (instance $libc))
    (with "host" (instance (export "echo" (func $host-lowered))))))
  (func (export "echo-bytes") (param "b" (list u8)) (result (list u8))
    (canon lift (core func $main "echo") OPTIONS))
  (func (export "echo-s8") (param "b" (list s8)) (result (list s8))
    (canon lift (core func $main "echo") OPTIONS))
  (func (export "echo-u32") (param "b" (list u32)) (result (list u32))
    (canon lift (core func $main "echo") OPTIONS))
  (func (export "echo-strings") (param "b" (list string)) (result (list string))
    (canon lift (core func $main "echo") OPTIONS))
  (func (export "echo-blobs") (param "b" (list (list u8))) (result (list (list u8)))
    (canon lift (core func $main "echo") OPTIONS))
  (func (export "call-host") (param "b" (list u8)) (result (list u8))
    (canon lift (core func $main "call-host") OPTIONS))
)
""".replace("OPTIONS", '(memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))')

_rng = random.Random(15)
LENGTHS = [0, 1, 2, 31, 4096, *sorted(_rng.randrange(3, 100_000) for _ in range(6))]
SLOW_LENGTHS = [pytest.param(MIB, marks=pytest.mark.slow, id="1MiB")]


class Wat:
    """The WAT component in a fresh store; ``host_calls`` records what the host import received."""

    def __init__(self, engine: wasmtime.Engine, component: wc.Component) -> None:
        self.host_calls: list[bytes] = []
        linker = wc.Linker(engine)
        with linker.root() as root:
            root.add_func("host-echo", self._host_echo)
        self.store = wasmtime.Store(engine)
        self.component = component
        self.instance = linker.instantiate(self.store, component)

    def _host_echo(self, store: object, body: bytes) -> bytes:
        self.host_calls.append(body)
        return body

    def func(self, name: str) -> Callable[[Any], Any]:
        index = self.component.get_export_index(name)
        assert index is not None
        func = self.instance.get_func(self.store, index)
        assert func is not None
        return lambda value: func(self.store, value)

    def list_type(self, name: str) -> Any:
        """The ``ListType`` of export ``name``'s parameter."""
        index = self.component.get_export_index(name)
        assert index is not None
        func = self.instance.get_func(self.store, index)
        assert func is not None
        return func.type(self.store).params[0][1]


@pytest.fixture(scope="module")
def compiled() -> tuple[wasmtime.Engine, wc.Component]:
    engine = wasmtime.Engine()
    return engine, wc.Component(engine, WAT)


@pytest.fixture
def wat(compiled: tuple[wasmtime.Engine, wc.Component]) -> Wat:
    wasm_bytes.install()
    return Wat(*compiled)


def _lowered(lower: Callable[[Any], None]) -> Any:
    value = ffi.wasmtime_component_val_t()
    lower(ctypes.pointer(value))
    return value


def _image(value: Any) -> tuple[int, int, bytes]:
    """A lowered list: (kind, length, the C value array's kind and value bytes of every element)."""
    vallist = value.of.list
    raw = ctypes.string_at(vallist.data, vallist.size * wasm_bytes.VAL_SIZE) if vallist.size else b""
    step = wasm_bytes.VAL_SIZE
    kinds, values = raw[wasm_bytes.KIND_OFFSET :: step], raw[wasm_bytes.VALUE_OFFSET :: step]
    return value.kind, vallist.size, kinds + values


@pytest.mark.parametrize("length", [*LENGTHS, *SLOW_LENGTHS])
def test_lowering_and_lifting_match_the_library_byte_for_byte(wat: Wat, length: int) -> None:
    """Both lowerings give the same C value array; each lift reads the other's array back exactly."""
    data = random.Random(length).randbytes(length)
    u8_list = wat.list_type("echo-bytes")
    theirs = _lowered(lambda ptr: LIBRARY_LOWER(u8_list, wat.store, data, ptr))
    ours = _lowered(lambda ptr: lower_bytes(data, ptr))
    expected = (ffi.WASMTIME_COMPONENT_LIST.value, length, bytes([wasm_bytes.U8_KIND]) * length + data)
    assert _image(theirs) == expected
    assert _image(ours) == expected
    assert lift_bytes(theirs) == data  # each lift frees the list it read, as the library's does
    assert LIBRARY_LIFT(u8_list, ours) == data


@pytest.mark.parametrize("length", [*LENGTHS, *SLOW_LENGTHS])
def test_round_trips_through_wasmtime_both_ways(wat: Wat, length: int) -> None:
    """An export (lower the argument, lift the result) and an import the guest calls (lift, lower)."""
    data = random.Random(-length).randbytes(length)
    assert wat.func("echo-bytes")(data) == data
    assert wat.func("call-host")(data) == data
    assert wat.host_calls == [data]


def _expected(data: bytes) -> tuple[int, int, bytes]:
    return ffi.WASMTIME_COMPONENT_LIST.value, len(data), bytes([wasm_bytes.U8_KIND]) * len(data) + data


def _lower_and_check(data: bytes) -> None:
    value = _lowered(lambda ptr: lower_bytes(data, ptr))
    assert _image(value) == _expected(data)
    assert lift_bytes(value) == data


def test_the_template_grows_and_what_a_longer_list_left_in_it_never_shows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fresh template grows to the longest list (from CHUNK, doubling); a short list after a
    long one carries none of the long one's bytes, and a long one after it all of its own."""
    template = wasm_bytes._Template()
    monkeypatch.setattr(wasm_bytes, "_template", template)
    rng = random.Random(7)
    long, short = rng.randbytes(wasm_bytes.CHUNK * 3), rng.randbytes(5)
    _lower_and_check(b"")
    assert template.capacity == wasm_bytes.CHUNK
    _lower_and_check(long)
    assert template.capacity == wasm_bytes.CHUNK * 3
    _lower_and_check(short)
    _lower_and_check(rng.randbytes(wasm_bytes.CHUNK * 3 + 1))
    assert template.capacity == wasm_bytes.CHUNK * 6  # doubled, not grown by one
    _lower_and_check(long[::-1])


@pytest.mark.parametrize("length", [999, 1000, 1001, 2000, 2999, 3001])
def test_a_list_longer_than_the_template_is_lowered_in_parts(
    monkeypatch: pytest.MonkeyPatch, length: int
) -> None:
    """Past KEEP elements the template stops growing; the list is filled KEEP at a time, the
    same bytes as the library's."""
    template = wasm_bytes._Template()
    monkeypatch.setattr(wasm_bytes, "_template", template)
    monkeypatch.setattr(wasm_bytes, "KEEP", 1000)
    monkeypatch.setattr(wasm_bytes, "CHUNK", 100)
    _lower_and_check(random.Random(length).randbytes(length))
    assert template.capacity == min(length, 1000)


def test_a_failure_while_lowering_in_parts_frees_the_list_and_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error between the parts (a KeyboardInterrupt, say) deletes the half-filled list,
    made all plain values first, and propagates; the next list is lowered as usual."""
    monkeypatch.setattr(wasm_bytes, "_template", wasm_bytes._Template())
    monkeypatch.setattr(wasm_bytes, "KEEP", 1000)
    deleted: list[int] = []
    real_memmove, real_delete = ctypes.memmove, ffi.wasmtime_component_vallist_delete
    moves = 0

    def memmove(*args: Any) -> Any:
        nonlocal moves
        moves += 1
        if moves == 2:
            raise KeyboardInterrupt
        return real_memmove(*args)

    def delete(raw: Any) -> None:
        vallist = raw._obj
        image = ctypes.string_at(vallist.data, vallist.size * wasm_bytes.VAL_SIZE)
        deleted.append(vallist.size)
        assert set(image[wasm_bytes.KIND_OFFSET :: wasm_bytes.VAL_SIZE]) == {wasm_bytes.BOOL_KIND}
        real_delete(raw)

    monkeypatch.setattr(ctypes, "memmove", memmove)
    monkeypatch.setattr(ffi, "wasmtime_component_vallist_delete", delete)
    with pytest.raises(KeyboardInterrupt):
        _lowered(lambda ptr: lower_bytes(bytes(2500), ptr))
    assert deleted == [2500]
    monkeypatch.setattr(ctypes, "memmove", real_memmove)
    monkeypatch.setattr(ffi, "wasmtime_component_vallist_delete", real_delete)
    _lower_and_check(b"after")


def test_other_element_types_keep_the_library_conversion(wat: Wat, monkeypatch: pytest.MonkeyPatch) -> None:
    """``list<s8>``, ``list<u32>``, ``list<string>`` never reach the bulk path; ``list<list<u8>>``'s
    inner lists do, its outer list does not."""
    calls: list[str] = []

    def spy(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            calls.append(name)
            return real(*args)

        return wrapper

    monkeypatch.setattr(wasm_bytes, "lower_bytes", spy("lower", lower_bytes))
    monkeypatch.setattr(wasm_bytes, "lift_bytes", spy("lift", lift_bytes))
    assert wat.func("echo-s8")([-128, -1, 0, 1, 127]) == [-128, -1, 0, 1, 127]
    assert wat.func("echo-u32")([0, 255, 256, 2**32 - 1]) == [0, 255, 256, 2**32 - 1]
    assert wat.func("echo-strings")(["", "héllo", "x" * 300]) == ["", "héllo", "x" * 300]
    assert wat.func("echo-s8")([]) == []
    assert calls == []
    assert wat.func("echo-blobs")([b"a", b"", bytes(range(256))]) == [b"a", b"", bytes(range(256))]
    assert calls == ["lower"] * 3 + ["lift"] * 3


def test_only_bytes_are_accepted_as_the_library_requires(wat: Wat) -> None:
    """A ``bytearray``, a ``str`` or a list of ints is refused with the library's own TypeError."""
    u8_list = wat.list_type("echo-bytes")
    values: list[object] = [bytearray(b"abc"), "abc", [1, 2, 3], memoryview(b"abc")]
    for value in values:

        def library(ptr: Any, value: object = value) -> None:
            LIBRARY_LOWER(u8_list, wat.store, value, ptr)

        def ours(ptr: Any, value: object = value) -> None:
            lower_bytes(value, ptr)

        for lower in (library, ours):
            with pytest.raises(TypeError, match="expected bytes value"):
                _lowered(lower)
    with pytest.raises(TypeError):
        wat.func("echo-bytes")(bytearray(b"abc"))


def test_a_list_that_is_not_u8_is_refused_when_lifted(wat: Wat) -> None:
    """Lifting checks every element's kind: a ``list<s8>`` array is not taken for bytes."""
    s8_list = wat.list_type("echo-s8")
    value = _lowered(lambda ptr: LIBRARY_LOWER(s8_list, wat.store, [1, -2, 3], ptr))
    with pytest.raises(UnsupportedWasmtime, match="not U8"):
        lift_bytes(value)
    with pytest.raises(UnsupportedWasmtime, match="value kind"):
        lift_bytes(ffi.wasmtime_component_val_t())  # a zeroed value: a bool, not a list


def test_the_local_host_installs_it() -> None:
    """Importing the local host's wasm module puts every list<u8> on the bulk path."""
    import provider.host.wasm  # noqa: F401

    assert wasm_bytes.installed()


def test_the_version_range_is_the_one_pyproject_pins() -> None:
    pinned = re.search(r'"wasmtime>=(\d+),<(\d+)"', (ROOT / "pyproject.toml").read_text())
    assert pinned is not None
    assert range(int(pinned[1]), int(pinned[2])) == wasm_bytes.SUPPORTED_MAJOR
    assert int(importlib.metadata.version("wasmtime").split(".")[0]) in wasm_bytes.SUPPORTED_MAJOR


@pytest.mark.parametrize("version", ["51.0.0", "49.0.2", "nightly"])
def test_another_wasmtime_version_fails_loudly_at_import(
    monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    """Loading the module under another wasmtime raises, naming the version and what to do."""
    real = importlib.metadata.version

    def fake(name: str) -> str:
        return version if name == "wasmtime" else real(name)

    monkeypatch.setattr(importlib.metadata, "version", fake)
    spec = importlib.util.spec_from_file_location("wasm_bytes_elsewhere", wasm_bytes.__file__)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(ProviderError, match=re.escape(version)) as raised:
        spec.loader.exec_module(module)
    assert type(raised.value).__name__ == "UnsupportedWasmtime"
    assert "SUPPORTED_MAJOR" in str(raised.value)
