"""Building Python components with componentize-py, cached by a hash of their inputs. I/O.

componentize-py's output is not deterministic (its pre-initialised heap differs from run
to run), so a build is keyed by what goes **in**: the componentize-py version, the world
and module names, every WIT file under ``wit/`` and every Python source of the component.
Builds land in ``<cache>/components/<name>-<digest>.wasm`` (kept across ``make clean``)
and are copied to where the manifest's ``image:`` points (``build/components/<name>.wasm``).
A lock file per digest makes concurrent builds of the same inputs (two test runs) wait
for one build instead of repeating it.

Image references (``properties.image`` of a manifest's components) resolve as follows:

* ``file://<path>``: relative paths are relative to the manifest's directory (as
  ``wash app deploy`` resolves them). A path ``<root>/build/components/<name>.wasm`` whose
  ``<root>/components/<name>/app.py`` exists is built from that directory, so it is
  never stale; any other path must be an existing ``.wasm`` file.
* anything else (an OCI reference) is refused: the local host does not pull images.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from provider.errors import ProviderError
from provider.host.machine import find_executable

log = logging.getLogger("provider.host.build")

WORLD = "component"
"""The world in ``wit/world.wit`` that components are built against."""
MODULE = "app"
"""The module of a component's directory that defines its exports (``app.py``)."""
BUILD_TIMEOUT = 900.0
"""Seconds one componentize-py build may take (typically 10-15 s; much longer only on a loaded machine)."""
FILE_SCHEME = "file://"


class BuildError(ProviderError):
    """A component could not be built, or its image could not be resolved."""


@dataclass(frozen=True)
class ComponentSource:
    """A Python component's sources: ``directory/<module>.py`` and friends, built against ``wit``."""

    name: str
    directory: Path
    wit: Path
    world: str = WORLD
    module: str = MODULE

    def python_files(self) -> list[Path]:
        """Every Python source of the component, in a stable order (``__pycache__`` left out)."""
        return sorted(
            p
            for p in self.directory.rglob("*.py")
            if "__pycache__" not in p.relative_to(self.directory).parts
        )


def tool_version() -> str:
    """The installed componentize-py's version."""
    return importlib.metadata.version("componentize-py")


def find_componentize_py() -> str:
    """The ``componentize-py`` executable installed beside this interpreter (or on PATH)."""
    found = find_executable("componentize-py")
    if found is None:
        raise BuildError("componentize-py not found: install the project's dependencies (make setup)")
    return found


def inputs_digest(source: ComponentSource) -> str:
    """SHA-256 over everything that decides a build's output (never over the output itself)."""
    digest = hashlib.sha256()

    def feed(label: str, data: bytes) -> None:
        # Length-prefixed, so no two different input sets can produce the same byte stream.
        for part in (label.encode(), data):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)

    feed("componentize-py", tool_version().encode())
    feed("world", source.world.encode())
    feed("module", source.module.encode())
    for wit in sorted(source.wit.rglob("*.wit")):
        feed(f"wit/{wit.relative_to(source.wit).as_posix()}", wit.read_bytes())
    for py in source.python_files():
        feed(f"src/{py.relative_to(source.directory).as_posix()}", py.read_bytes())
    return digest.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def replace_atomically(data_from: Path, to: Path) -> None:
    """Copy ``data_from`` to ``to`` through a temporary file, so readers never see half a file."""
    to.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=to.parent, prefix=f".{to.name}.")
    os.close(fd)
    try:
        shutil.copyfile(data_from, tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would keep a host running as another user from reading it
        os.replace(tmp, to)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class ComponentBuilder:
    """Builds components into ``cache_dir/components``, reusing any build with the same inputs."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir / "components"

    def cached_path(self, source: ComponentSource, digest: str) -> Path:
        return self.cache_dir / f"{source.name}-{digest[:32]}.wasm"

    def build(self, source: ComponentSource, out: Path | None = None) -> Path:
        """The component's ``.wasm``, built only if no build of the same inputs exists.

        With ``out``, the build is also copied there (unless ``out`` already holds it) and
        ``out`` is returned. Raises :class:`BuildError` with componentize-py's output.
        """
        if not (source.directory / f"{source.module}.py").is_file():
            raise BuildError(f"{source.directory}: no {source.module}.py, so nothing to build")
        digest = inputs_digest(source)
        cached = self.cached_path(source, digest)
        with file_lock(cached.with_suffix(".lock")):
            if not cached.is_file():
                self._componentize(source, cached)
        if out is None:
            return cached
        stamp = out.with_name(out.name + ".inputs")
        if not (out.is_file() and stamp.is_file() and stamp.read_text().strip() == digest):
            replace_atomically(cached, out)
            stamp.write_text(digest + "\n")
        return out

    def _componentize(self, source: ComponentSource, target: Path) -> None:
        log.info(
            "building component %s from %s (componentize-py %s)",
            source.name,
            source.directory,
            tool_version(),
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        # A copy of the sources: componentize-py writes __pycache__ into the folder it is given.
        with tempfile.TemporaryDirectory(prefix=f"build-{source.name}-") as tmp:
            src = Path(tmp) / "src"
            shutil.copytree(source.directory, src, ignore=shutil.ignore_patterns("__pycache__"))
            partial = Path(tmp) / f"{source.name}.wasm"
            command = [
                find_componentize_py(),
                "-d",
                str(source.wit),
                "-w",
                source.world,
                "componentize",
                "-p",
                str(src),
                source.module,
                "-o",
                str(partial),
            ]
            try:
                done = subprocess.run(
                    command,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=BUILD_TIMEOUT,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise BuildError(
                    f"building {source.name}: componentize-py took over {BUILD_TIMEOUT:g}s"
                ) from exc
            if done.returncode != 0 or not partial.is_file():
                output = "\n".join((done.stdout + done.stderr).strip().splitlines()[-40:])
                raise BuildError(
                    f"building {source.name} from {source.directory} failed "
                    f"(componentize-py exit {done.returncode}):\n{output}"
                )
            replace_atomically(partial, target)


def find_sources(root: Path) -> list[ComponentSource]:
    """Every ``root/components/<name>/app.py`` as a component built against ``root/wit``."""
    found = sorted(p.parent for p in (root / "components").glob(f"*/{MODULE}.py"))
    return [ComponentSource(d.name, d, root / "wit") for d in found]


@dataclass(frozen=True)
class Image:
    """Where a component's wasm is, and the sources it is built from (``None``: a prebuilt file)."""

    path: Path
    source: ComponentSource | None = None


def resolve_image(image: str, base: Path) -> Image:
    """Resolve a manifest's ``image`` against the manifest's directory ``base``; checks, builds nothing.

    Raises :class:`BuildError` saying what is wrong (the caller adds the manifest line).
    """
    if not image.startswith(FILE_SCHEME):
        raise BuildError(
            f"image {image!r}: the local host runs file:// images only (it pulls nothing); "
            "use file://./build/components/<name>.wasm to build components/<name>/ on demand"
        )
    path = Path(image[len(FILE_SCHEME) :])
    path = (path if path.is_absolute() else base / path).resolve()
    if path.suffix == ".wasm" and path.parent.name == "components" and path.parent.parent.name == "build":
        root = path.parent.parent.parent
        directory = root / "components" / path.stem
        if (directory / f"{MODULE}.py").is_file():
            return Image(path, ComponentSource(path.stem, directory, root / "wit"))
    if not path.is_file():
        hint = ""
        if path.parent.name == "components" and path.parent.parent.name == "build":
            sources = path.parent.parent.parent / "components" / path.stem / f"{MODULE}.py"
            hint = f", and there is no {sources} to build it from"
        raise BuildError(f"image {image!r}: {path} does not exist{hint}")
    return Image(path)


def ensure_built(image: Image, builder: ComponentBuilder) -> Path:
    """The image's ``.wasm``, built (or brought up to date) first if it has sources."""
    if image.source is None:
        return image.path
    return builder.build(image.source, image.path)
