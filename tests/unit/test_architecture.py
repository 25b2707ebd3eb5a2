"""The layering of ``provider/`` holds: dependencies point inward, pure modules do no I/O.

Layers, inner to outer: ``wrpc`` → ``wasmcloud`` → ``websocket`` → ``bridge`` → ``host``. A module may
import its own layer and inner ones only; ``__main__`` (the composition root) may import all.
A module whose docstring says "Pure." imports no event loop, network, process or wasm library.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "provider"
LAYERS = ["wrpc", "wasmcloud", "websocket", "bridge", "host"]
IO_MODULES = {
    "asyncio",
    "nats",
    "websockets",
    "wasmtime",
    "socket",
    "subprocess",
    "threading",
    "ssl",
    "selectors",
}
MUST_BE_PURE = {
    "errors.py",
    "wrpc/codec.py",
    "wrpc/messaging.py",
    "wrpc/subjects.py",
    "bridge/subjects.py",
    "bridge/config.py",
}


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _layer(path: Path) -> int | None:
    parts = path.relative_to(ROOT).parts
    if parts == ("__main__.py",):  # the composition root: wires every layer together
        return len(LAYERS) - 1
    return LAYERS.index(parts[0]) if len(parts) > 1 and parts[0] in LAYERS else None


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_dependencies_point_inward(path: Path) -> None:
    """No module imports a layer outside its own."""
    own = _layer(path)
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] != "provider" or len(parts) < 2 or parts[1] not in LAYERS:
            continue
        target = LAYERS.index(parts[1])
        limit = own if own is not None else -1
        assert target <= limit, f"{path.relative_to(ROOT)} imports {name}, an outer layer"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_modules_do_no_io(path: Path) -> None:
    """Modules documented as pure import no I/O library."""
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    if "Pure." not in docstring:
        assert str(path.relative_to(ROOT)) not in MUST_BE_PURE, f"{path} must say it is pure"
        return
    io = {name for name in _imports(path) if name.split(".")[0] in IO_MODULES}
    assert not io, f"{path.relative_to(ROOT)} is documented as pure but imports {sorted(io)}"
