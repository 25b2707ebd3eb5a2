"""The benchmarks' helper processes (``python -m bench.servers …``, ``bench.bridge service``): started
with a "ready" handshake on stdout, stopped by closing their stdin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start(*args: str) -> subprocess.Popen[str]:
    """``python -m ARGS…`` in the project root; returns once it printed ``ready``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError(f"{args} did not start")
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    """Close its stdin (its signal to stop); kill it if it is not gone within 10 s."""
    if proc.stdin:
        proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
