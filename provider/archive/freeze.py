"""The archive's executable, frozen with PyInstaller and cached by a hash of its inputs. I/O.

:func:`freeze` runs PyInstaller on ``packaging/wasmcloud-ws-provider.spec`` (a one-dir
bundle of the provider process: Python, websockets, nats-py, msgpack, PyNaCl and its cffi
backend, nkeys, certifi; not the local host), packs the bundle into a reproducible gzip'd
tar and puts the ``/bin/sh`` stub of :mod:`provider.archive.stub` in front of it.

The result is cached in ``<cache>/par/<input key>/`` where the key hashes everything the
bundle is made from (:func:`inputs`): the provider's sources outside ``provider/host``, the
files in ``packaging/``, ``pyproject.toml``, the Python, PyInstaller and ``strip`` versions and
those of every bundled distribution. The same inputs always give the same bytes (PYTHONHASHSEED=0, sorted
entries, no times), so the key could as well name the output; a rebuild happens only when
something that goes into the bundle changed.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.metadata
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from provider.archive import stub
from provider.archive.par import native_target
from provider.errors import ArchiveError

BUNDLED = (
    "websockets",
    "nats-py",
    "msgpack",
    "PyNaCl",
    "cffi",
    "nkeys",
    "certifi",
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-http",
    "opentelemetry-proto",
    "protobuf",
)
"""The distributions frozen into the provider; their versions are part of the cache key."""
SPEC = Path("packaging") / "wasmcloud-ws-provider.spec"
KEEP = 3
"""Frozen builds kept in the cache (the newest), so switching branches does not rebuild."""
FREEZE_TIMEOUT = 900
"""Seconds PyInstaller may take on a busy machine (about 15 s on an idle one)."""


def _sources(root: Path) -> Iterator[Path]:
    for path in sorted((root / "provider").rglob("*.py")):
        relative = path.relative_to(root)
        if "__pycache__" not in relative.parts and relative.parts[1] != "host":
            yield path
    for path in sorted((root / "packaging").iterdir()):
        if path.is_file():
            yield path
    yield root / "pyproject.toml"  # the version the bundle reports, and its dependencies


def inputs(root: Path) -> dict[str, str]:
    """What the frozen bundle is made from: source file → SHA-256, tool or library → version."""
    found = {
        "python": sys.version,
        "platform": native_target(),
        "pyinstaller": _version("pyinstaller"),
        "strip": _strip_version(),
    }
    for name in BUNDLED:
        found[f"dist:{name}"] = _version(name)
    for path in _sources(root):
        found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _strip_version() -> str:
    """binutils' strip, which the spec uses when there is one, or ``absent``."""
    strip = shutil.which("strip")
    if strip is None:
        return "absent"
    try:
        done = subprocess.run([strip, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    return (done.stdout.splitlines() or ["unknown"])[0]


def input_key(root: Path) -> str:
    """The cache key of the frozen bundle: a hash of :func:`inputs`."""
    text = json.dumps(inputs(root), sort_keys=True).encode()
    return hashlib.sha256(text).hexdigest()[:32]


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        if distribution == "pyinstaller":
            raise ArchiveError(
                "PyInstaller is not installed: `make par` installs it (pip install -e '.[par]')"
            ) from None
        raise ArchiveError(f"{distribution} is not installed in this environment") from None


@dataclass(frozen=True)
class Frozen:
    """A frozen provider executable in the cache."""

    path: Path
    target: str
    key: str
    """The SHA-256 of the bundle behind the stub: the name of its unpacked cache."""
    glibc: str
    bundle_bytes: int
    seconds: float
    """How long freezing took when it was built."""
    cached: bool


def glibc_needed(bundle: Path) -> str:
    """The newest ``GLIBC_2.x`` symbol version any ELF file of ``bundle`` asks for."""
    newest = (2, 17)
    pattern = re.compile(rb"GLIBC_([0-9]+)\.([0-9]+)")
    for path in bundle.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if data[:4] == b"\x7fELF":
                for match in pattern.finditer(data):
                    newest = max(newest, (int(match[1]), int(match[2])))
    return f"{newest[0]}.{newest[1]}"


def pack_directory(directory: Path) -> bytes:
    """A reproducible gzip'd tar of everything under ``directory`` (sorted, time 0, owned by
    root, modes 0755 or 0644), as the stub unpacks it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted(directory.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(directory)))
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
            if info.isfile():
                with path.open("rb") as file:
                    tar.addfile(info, file)
            else:
                tar.addfile(info)
    # Level 6: 2.4 s where 9 takes 9 s on this bundle, for 0.4 % more bytes.
    return gzip.compress(buffer.getvalue(), compresslevel=6, mtime=0)


def _read(entry: Path) -> Frozen | None:
    try:
        meta = json.loads((entry / "frozen.json").read_text())
        path = entry / f"{meta['target']}.bin"
        if not path.is_file():
            return None
        return Frozen(
            path,
            meta["target"],
            meta["key"],
            meta["glibc"],
            meta["bundle_bytes"],
            meta["seconds"],
            cached=True,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _prune(cache: Path, keep: Path) -> None:
    """Keep the :data:`KEEP` newest builds; drop work folders of builds that were killed."""
    now = time.time()
    for stale in cache.glob(".freeze-*"):
        with contextlib.suppress(OSError):
            if now - stale.stat().st_mtime > FREEZE_TIMEOUT:
                shutil.rmtree(stale, ignore_errors=True)
    entries = sorted(
        (p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for entry in entries[KEEP:]:
        if entry != keep:
            shutil.rmtree(entry, ignore_errors=True)


def freeze(root: Path, cache_dir: Path, *, log: bool = True) -> Frozen:
    """The frozen provider for this machine's target, from the cache or built now."""
    root = root.resolve()
    if not (root / SPEC).is_file():
        raise ArchiveError(f"{root / SPEC} is missing: the provider is frozen from a checkout")
    target = native_target()
    cache = cache_dir / "par"
    entry = cache / input_key(root)
    found = _read(entry)
    if found is not None:
        os.utime(entry)  # the most recently used survive pruning
        return found
    cache.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".freeze-", dir=cache) as work_name:
        work = Path(work_name)
        if log:
            print("freezing the provider with PyInstaller…", flush=True)
        _run_pyinstaller(root, work)
        bundle = work / "dist" / stub.NAME
        glibc = glibc_needed(bundle)
        payload = pack_directory(bundle)
        key = hashlib.sha256(payload).hexdigest()
        version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
        executable = stub.wrap(payload, key, version=version, target=target, glibc=glibc)
        seconds = round(time.monotonic() - started, 1)
        staged = work / "entry"
        staged.mkdir()
        (staged / f"{target}.bin").write_bytes(executable)
        (staged / f"{target}.bin").chmod(0o755)
        meta = {"target": target, "key": key, "glibc": glibc, "bundle_bytes": len(payload)}
        meta["seconds"] = seconds
        (staged / "frozen.json").write_text(json.dumps(meta, indent=2) + "\n")
        if entry.exists() and _read(entry) is None:
            shutil.rmtree(entry, ignore_errors=True)  # what an interrupted or older build left
        with contextlib.suppress(OSError):
            staged.rename(entry)  # atomic; a concurrent build of the same inputs made the same bytes
    _prune(cache, entry)
    result = _read(entry)
    if result is None:
        raise ArchiveError(f"the frozen provider did not land in {entry}")
    return Frozen(result.path, target, key, glibc, len(payload), seconds, cached=False)


def _run_pyinstaller(root: Path, work: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "PyInstaller",
        "--noconfirm",
        "--log-level",
        "WARN",
        "--distpath",
        str(work / "dist"),
        "--workpath",
        str(work / "build"),
        str(root / SPEC),
    ]
    # A fixed hash seed makes the frozen bytecode (sets, frozensets) the same on every build.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    log_path = work / "pyinstaller.log"
    try:
        with log_path.open("w") as log_file:
            done = subprocess.run(
                command,
                cwd=root,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                timeout=FREEZE_TIMEOUT,
                check=False,
            )
    except subprocess.TimeoutExpired:
        raise ArchiveError(f"PyInstaller took more than {FREEZE_TIMEOUT} s") from None
    if done.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise ArchiveError(f"PyInstaller failed (exit {done.returncode}):\n{tail}")
