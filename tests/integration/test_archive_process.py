"""The provider archive's own binary, run as a host runs it.

The archive is built once per test session (``make par``'s code: the frozen provider comes
from ``.cache/par`` when its inputs have not changed), signed with throw-away keys, and its
``x86_64-linux.bin`` is extracted as a host extracts it, to a directory outside the
checkout. This module's ``launcher`` fixture is that binary, so the provider-process tests
imported below run again, unchanged, against it: empty environment, health, HostData links,
sealed secrets, bad HostData, SIGTERM, restart, server-mode echo, ``wss://``, NATS
JWT authentication, OpenTelemetry export (the exporters are imported by name, so only running
them shows they were bundled). The tests written here add what only the archive has: the claims, the
stub's cache in temp dirs, SIGKILL, no trace of the checkout, and the local host running it.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from provider import nkeys
from provider.archive import build, freeze, par, stub
from provider.errors import ArchiveError
from provider.host.lattice import LocalLattice, handler_link
from provider.host.launcher import provider_executable
from provider.host.local import HostError, LocalHost
from provider.host.machine import free_port
from provider.host.nats_server import NatsServer
from provider.host.wadm import linked_component_manifest, load
from tests.conftest import MakeLattice
from tests.integration.components import CACHE, built
from tests.integration.test_client_mode import pki, test_wss_with_a_custom_ca  # noqa: F401
from tests.integration.test_nats_auth import (  # noqa: F401
    operator_server,
    test_provider_authenticates_with_the_user_jwt_and_seed,
)
from tests.integration.test_provider_process import (  # noqa: F401
    test_a_restarted_provider_gets_its_links_again,
    test_healthy_within_five_seconds_with_an_empty_environment,
    test_links_from_host_data_are_applied_at_start,
    test_malformed_host_data_exits_nonzero_with_a_clear_message,
    test_sealed_link_secrets_and_provider_secrets_become_config,
    test_sigterm_stops_cleanly,
    test_the_provider_serves_on_either_event_loop,
)
from tests.integration.test_server_mode import (  # noqa: F401
    echo_server,
    test_json_echo_via_reply_to,
    test_msgpack_echo,
)
from tests.integration.test_telemetry import (  # noqa: F401
    receiver,
    test_a_websocket_echo_is_one_trace_and_the_metrics_count_it,
    test_logs_are_exported_with_enable_logs,
)

# The first test may freeze the provider (15-60 s) and build the echo component.
pytestmark = pytest.mark.timeout(freeze.FREEZE_TIMEOUT + 300)

ROOT = Path(__file__).resolve().parents[2]
PROVIDER = "websocket-provider"
WAIT = 10.0
TARGET = par.native_target()


class Archive:
    """The session's archive and its binary, extracted outside the checkout."""

    def __init__(self, path: Path, binary: Path, built: build.Built) -> None:
        self.path = path
        self.binary = binary
        self.built = built

    @property
    def key(self) -> str:
        info = stub.parse(self.binary.read_bytes())
        assert info is not None
        return info.key


@pytest.fixture(scope="session")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    """``make par`` with throw-away keys, then the binary as a host writes it to its cache."""
    signing = build.Keys(
        nkeys.KeyPair.generate(nkeys.ACCOUNT), nkeys.KeyPair.generate(nkeys.SERVICE).public, "test keys"
    )
    out = tmp_path_factory.mktemp("par") / "wasmcloud-ws-provider.par.gz"
    built = build.build(ROOT, out, CACHE, {}, signing=signing)
    host_cache = tmp_path_factory.mktemp("wasmcloudcache")
    binary = host_cache / TARGET
    binary.write_bytes(par.load_target(out.read_bytes(), TARGET))
    binary.chmod(0o755)
    assert not binary.resolve().is_relative_to(ROOT)
    return Archive(out, binary, built)


@pytest.fixture(scope="session")
def launcher(archive: Archive) -> Path:
    """What the imported tests start: the archive's binary, not this checkout's venv."""
    return archive.binary


def test_inspect_verifies_the_built_archive(archive: Archive) -> None:
    """``python -m provider.archive inspect`` checks hashes, key types and signature, and names
    the bundle's glibc; the claims carry pyproject's name and version."""
    done = subprocess.run(
        [sys.executable, "-m", "provider.archive", "inspect", str(archive.path), "--target", TARGET],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "hash matches the claims" in done.stdout
    assert "verified" in done.stdout
    assert f"needs glibc >= {archive.built.frozen.glibc}" in done.stdout
    meta = build.metadata(ROOT)
    assert (archive.built.claims.name, archive.built.claims.version) == (meta.name, meta.version)


def test_version_names_the_ca_certificates_it_found(archive: Archive) -> None:
    """Run by hand with ``--version``, the binary says what it is and where its CAs are."""
    done = subprocess.run(
        [str(archive.binary), "--version"],
        env={},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    version, ca = done.stdout.splitlines()
    assert version.startswith(f"wasmcloud-ws-provider {build.metadata(ROOT).version} (frozen, Python 3.")
    path = ca.removeprefix("CA certificates: ").split(" (")[0]
    assert os.path.exists(path), ca


async def test_shutdown_request_is_answered_and_the_binary_exits_zero(make_lattice: MakeLattice) -> None:
    """The host's shutdown request: the reply, then exit code 0.

    Not timed here: the venv run of ``test_shutdown_exits_zero_within_300_ms`` holds the host's
    300 ms line for this code, and ``make bench-par`` measures the frozen binary's exit (as fast
    as the venv's); a second timed run only doubled the misses on a loaded machine.
    """
    lattice = await make_lattice()
    assert await lattice.shutdown() == b"shutting down"
    assert await lattice.process.wait(WAIT) == 0
    assert "stopped" in lattice.process.output


def _processes_running(directory: Path) -> list[int]:
    """PIDs whose executable lies under ``directory``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                exe = os.readlink(f"/proc/{entry}/exe")
            except OSError:
                continue
            if exe.startswith(f"{directory}/"):
                found.append(int(entry))
    return found


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


async def test_sigkill_leaves_no_process_and_temp_dirs_do_not_grow(
    archive: Archive, nats_server: NatsServer, tmp_path: Path
) -> None:
    """What a host does on every stop, three times over: the PID it holds is the provider's
    Python, SIGKILL ends it and its WebSocket server, and its temp dir holds the same one
    unpacked bundle each time — nothing more."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    trees = []
    for _ in range(3):
        port = free_port()
        lattice = LocalLattice(
            nats_server.url,
            archive.binary,
            environment={"TMPDIR": str(temp)},
            links=(handler_link(PROVIDER, "echo", MODE="server", URI=f"127.0.0.1:{port}"),),
        )
        try:
            await lattice.start()
            pid = lattice.process.pid
            cache = temp / f"{stub.NAME}-{os.getuid()}" / archive.key
            assert _processes_running(cache) == [pid]  # exec'd: no bootstrap parent, no child
            async with await connect(f"ws://127.0.0.1:{port}/ws", open_timeout=WAIT):
                pass
            await lattice.process.kill()
            assert _processes_running(cache) == []
            with pytest.raises(ConnectionRefusedError):
                await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)
            trees.append(_tree(temp))
        finally:
            await lattice.stop()
    assert trees[0] == trees[1] == trees[2]
    top = [name for name in trees[0] if "/" not in name]
    assert top == [f"{stub.NAME}-{os.getuid()}"]
    assert [name for name in trees[0] if name.count("/") == 1] == [f"{top[0]}/{archive.key}"]


def _mapped_files(pid: int) -> set[str]:
    files = set()
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/"):
                files.add(fields[5].strip())
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            files.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return files


async def test_the_running_binary_uses_nothing_from_the_checkout(
    archive: Archive, nats_server: NatsServer
) -> None:
    """Every file the provider has mapped or open is in its unpacked bundle or the system's:
    nothing of this checkout or its venv, so it runs where neither exists."""
    lattice = LocalLattice(nats_server.url, archive.binary, cwd=Path("/"))
    try:
        await lattice.start()
        files = _mapped_files(lattice.process.pid)
    finally:
        await lattice.stop()
    assert any(f.endswith("libpython3.11.so.1.0") or "libpython3" in f for f in files)
    assert not [f for f in files if f.startswith((str(ROOT), sys.prefix))]


async def test_the_local_host_runs_the_archive_its_manifest_names(
    archive: Archive, nats_server: NatsServer, tmp_path: Path
) -> None:
    """``image: file://…par.gz`` with ``provider="archive"``: the local host unpacks the binary
    (hash checked), starts *it*, and a WebSocket echo goes through echo.wasm."""
    port = free_port()
    handler = {"MODE": "server", "URI": f"127.0.0.1:{port}", "PATH": "/ws", "FORMAT": "json"}
    text = linked_component_manifest("echo", built()["echo"], handler=handler, consumer={"MODE": "server"})
    text = text.replace("file://./unused.par.gz", f"file://{archive.path}")
    host = LocalHost(
        load(text, source="t.yaml"), nats_server.url, base_dir=ROOT, cache_dir=CACHE, provider="archive"
    )
    async with host:
        assert host.lattice is not None
        executable = host.lattice.process.executable
        assert executable.name == f"{TARGET}.bin"
        assert executable.read_bytes() == archive.binary.read_bytes()
        async with await connect(f"ws://127.0.0.1:{port}/ws", open_timeout=WAIT) as ws:
            await ws.send(json.dumps({"subject": "t", "body": "through the archive"}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
            assert reply["body"] == "through the archive"
    tampered = tmp_path / "tampered.par.gz"
    tampered.write_bytes(_with_altered_binary(archive.path.read_bytes()))
    refused = LocalHost(
        load(text.replace(str(archive.path), str(tampered)), source="t.yaml"),
        nats_server.url,
        base_dir=ROOT,
        cache_dir=CACHE,
    )
    with pytest.raises(
        HostError, match=rf"^t\.yaml:\d+: capability 'websocket': .*{TARGET}: SHA-256 .* differs"
    ):
        await refused.start()
    assert refused.lattice is None


def _with_altered_binary(data: bytes) -> bytes:
    """The archive with one byte added to its binary; the claims untouched."""
    entries = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            extracted = tar.extractfile(member)
            assert extracted is not None
            content = extracted.read()
            entries.append(
                (member.name, content + b"#" if member.name.endswith(".bin") else content, member.mode)
            )
    return par.pack(entries, compress=True)


def test_auto_runs_the_venv_when_the_archive_is_not_built(tmp_path: Path) -> None:
    """``auto`` (the local host's default) falls back to this checkout's venv and says why."""
    path, what = provider_executable("file://./missing.par.gz", tmp_path, tmp_path)
    assert path.read_text().startswith("#!/bin/sh\n")
    assert "this checkout's venv" in what
    assert "make par" in what
    with pytest.raises(ArchiveError, match="does not exist: `make par` builds it"):
        provider_executable("file://./missing.par.gz", tmp_path, tmp_path, "archive")
    with pytest.raises(ArchiveError, match="not a file:// archive"):
        provider_executable("ghcr.io/x/y:1", tmp_path, tmp_path, "archive")
