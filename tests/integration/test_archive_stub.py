"""The archive executable's ``/bin/sh`` stub, run for real in front of a tiny stand-in bundle.

The stand-in's "provider" is a shell script that prints its PID, arguments and environment,
so these tests see what the stub does (unpack once, reuse, prune, exec) in milliseconds;
``test_archive_process.py`` runs the real frozen provider behind the same stub.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from provider.archive import stub
from provider.archive.freeze import pack_directory

WAIT = 20.0
FAKE_PROVIDER = """#!/bin/sh
echo "pid=$$"
echo "args=$*"
echo "cwd=$(pwd)"
env | sort | sed 's/^/env:/'
"""


def make_executable(
    directory: Path, version: str = "1.0.0", glibc: str = "2.17", body: str = FAKE_PROVIDER
) -> Path:
    """A stub around a bundle whose executable is ``body``; written to ``directory``."""
    bundle = directory / f"bundle-{version}"
    (bundle / "_internal").mkdir(parents=True)
    (bundle / "_internal" / "data.txt").write_text(version)
    script = bundle / stub.NAME
    script.write_text(body)
    script.chmod(0o755)
    payload = pack_directory(bundle)
    key = hashlib.sha256(payload).hexdigest()
    executable = directory / f"{version}" / "x86_64-linux.bin"
    executable.parent.mkdir()
    executable.write_bytes(stub.wrap(payload, key, version=version, target="x86_64-linux", glibc=glibc))
    executable.chmod(0o755)
    return executable


def key_of(executable: Path) -> str:
    info = stub.parse(executable.read_bytes())
    assert info is not None
    return info.key


def run(
    executable: Path | str, env: dict[str, str], *args: str, cwd: Path | str = "/"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(executable), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=WAIT, check=False
    )


def tree(root: Path) -> list[str]:
    """Every path under ``root`` (hidden ones included), relative, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def tmpdir_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose only variable is a TMPDIR of this test's own, and the cache root in it."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    return {"TMPDIR": str(temp)}, temp / f"{stub.NAME}-{os.getuid()}"


def test_unpacks_once_and_execs_with_the_hosts_pid_and_environment(
    tmp_path: Path, tmpdir_env: tuple[dict[str, str], Path]
) -> None:
    """The bundle runs from the cache with the stub's PID, its arguments and exactly the
    environment it was given (the stub's own PATH is not exported); a second start reuses it."""
    env, root = tmpdir_env
    executable = make_executable(tmp_path)
    process = subprocess.Popen(
        [str(executable), "a b", "c"], env=env, cwd="/", stdout=subprocess.PIPE, text=True
    )
    out, _ = process.communicate(timeout=WAIT)
    assert process.returncode == 0
    lines = out.splitlines()
    assert f"pid={process.pid}" in lines
    assert "args=a b c" in lines
    assert "cwd=/" in lines
    assert [line for line in lines if line.startswith("env:") and not line.startswith("env:PWD=")] == [
        f"env:TMPDIR={env['TMPDIR']}"
    ]
    key = key_of(executable)
    assert tree(root) == sorted([key, f"{key}/_internal", f"{key}/_internal/data.txt", f"{key}/{stub.NAME}"])
    assert oct(root.stat().st_mode & 0o777) == "0o700"
    inode = (root / key / stub.NAME).stat().st_ino
    assert run(executable, env).returncode == 0
    assert (root / key / stub.NAME).stat().st_ino == inode  # not unpacked again
    assert len(tree(root)) == 4


def test_runs_with_an_empty_environment_and_a_relative_path(tmp_path: Path) -> None:
    """No TMPDIR, no PATH, nothing: the cache is /tmp/wasmcloud-ws-provider-<uid>; $0 may be relative."""
    executable = make_executable(tmp_path, version="0.0.0-empty-env")
    key = key_of(executable)
    root = Path("/tmp") / f"{stub.NAME}-{os.getuid()}"
    try:
        done = run("./x86_64-linux.bin", {}, cwd=executable.parent)
        assert done.returncode == 0, done.stderr
        assert "env:" not in done.stdout.replace("env:PWD=", "")
        assert (root / key / stub.NAME).is_file()
    finally:
        shutil.rmtree(root / key, ignore_errors=True)


def test_a_new_version_prunes_old_ones_but_keeps_the_last_used_and_those_running(
    tmp_path: Path, tmpdir_env: tuple[dict[str, str], Path]
) -> None:
    """Cache bound: this version, the one used before it, and any still running; the rest go."""
    env, root = tmpdir_env
    old = [make_executable(tmp_path, version=f"0.{n}.0") for n in range(3)]
    assert run(old[0], env).returncode == 0
    # 0.0.0 stays "running": a process whose executable lies in its cache directory.
    running_dir = root / key_of(old[0])
    sleeper = running_dir / "sleep"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", sleeper)
    holder = subprocess.Popen([str(sleeper), "60"])
    try:
        for executable in old[1:]:
            assert run(executable, env).returncode == 0
        os.utime(running_dir, (1, 1))  # and the least recently used
        assert run(make_executable(tmp_path, version="0.3.0"), env).returncode == 0
        kept = {p.name for p in root.iterdir()}
        expected = {key_of(old[0]), key_of(old[2]), key_of(tmp_path / "0.3.0" / "x86_64-linux.bin")}
        assert kept == expected  # 0.1.0: neither running nor the last used before 0.3.0
    finally:
        holder.kill()
        holder.wait(WAIT)


def test_interrupted_unpacks_are_cleaned_up_and_concurrent_ones_left_alone(
    tmp_path: Path, tmpdir_env: tuple[dict[str, str], Path]
) -> None:
    """A .partial directory of a dead process (a SIGKILL mid-unpack) is removed at the next
    unpack; one of a live process is not."""
    env, root = tmpdir_env
    executable = make_executable(tmp_path)
    root.mkdir(mode=0o700)
    dead = subprocess.Popen(["true"])
    dead.wait(WAIT)
    stale = root / f".partial-{key_of(executable)}-{dead.pid}"
    live = root / f".partial-{'0' * 64}-{os.getpid()}"
    (stale / "junk").mkdir(parents=True)
    live.mkdir()
    assert run(executable, env).returncode == 0
    assert not stale.exists()
    assert live.exists()


def test_concurrent_first_starts_share_one_unpacked_copy(
    tmp_path: Path, tmpdir_env: tuple[dict[str, str], Path]
) -> None:
    """Six starts at once on an empty cache: all run, one copy stays, nothing half-written."""
    env, root = tmpdir_env
    executable = make_executable(tmp_path)
    processes = [
        subprocess.Popen([str(executable)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(6)
    ]
    for process in processes:
        _, err = process.communicate(timeout=WAIT)
        assert process.returncode == 0, err
    key = key_of(executable)
    assert tree(root) == sorted([key, f"{key}/_internal", f"{key}/_internal/data.txt", f"{key}/{stub.NAME}"])


def test_a_cache_root_others_may_write_is_refused(
    tmp_path: Path, tmpdir_env: tuple[dict[str, str], Path]
) -> None:
    """Code is only run from a directory of this user's that nobody else can write."""
    env, root = tmpdir_env
    root.mkdir()
    root.chmod(0o777)
    done = run(make_executable(tmp_path), env)
    assert done.returncode == 1
    assert "that only it may write: remove it" in done.stderr
    assert list(root.iterdir()) == []


def test_a_damaged_payload_fails_cleanly(tmp_path: Path, tmpdir_env: tuple[dict[str, str], Path]) -> None:
    """A truncated executable: a clear error, exit 1, and nothing left in the cache."""
    env, root = tmpdir_env
    executable = make_executable(tmp_path)
    data = executable.read_bytes()
    executable.write_bytes(data[: len(data) - 40])
    done = run(executable, env)
    assert done.returncode == 1
    assert "cannot unpack into" in done.stderr
    assert list(root.iterdir()) == []


def test_too_old_a_glibc_is_named(tmp_path: Path, tmpdir_env: tuple[dict[str, str], Path]) -> None:
    """A bundle that needs a newer glibc than this host's says so instead of a loader error."""
    env, root = tmpdir_env
    done = run(make_executable(tmp_path, glibc="9.99"), env)
    have = os.confstr("CS_GNU_LIBC_VERSION") or ""
    assert done.returncode == 1
    assert f"needs glibc >= 9.99, this host has {have.removeprefix('glibc ')}" in done.stderr
    assert not root.exists()
