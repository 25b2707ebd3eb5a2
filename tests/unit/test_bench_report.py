"""bench.report: the README's benchmark results and targets come from the numbers of one run.

The targets are judged from a results document, never written by hand; the README block is
replaced between its markers only; ``--variant`` specs parse into their three scopes.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.ws import Variant

ROOT = Path(__file__).resolve().parents[2]


def row(rate: float, p50: float) -> dict[str, float]:
    return {"messages": max(1, int(rate * 5)), "rate": rate, "p50_ms": p50, "p99_ms": p50 * 2}


def result(
    name: str, rates: dict[str, tuple[float, float]], memory: float, broadcast: float
) -> dict[str, Any]:
    cpu = {"server": 100.0} if name == report.BASELINE else {"server": 150.0, "component": 80.0}
    return {
        "name": name,
        "throughput": {case: row(*figures) for case, figures in rates.items()},
        "cpu_us_per_echo": {case: dict(cpu) for case in rates},
        "idle_bytes_per_session": memory,
        "broadcast_ms": broadcast,
    }


def document() -> dict[str, Any]:
    """Every target met by a small margin."""
    cases = ["1x1 32B", "1x1 4096B", "1x1 1048576B", "50x8 32B", "50x8 4096B"]
    base = dict.fromkeys(cases, (1000.0, 0.5))
    native = {**dict.fromkeys(cases, (300.0, 1.4)), "50x8 32B": (201.0, 100.0)}
    wasm = {**dict.fromkeys(cases, (100.0, 5.0)), "1x1 4096B": (71.0, 6.0), "1x1 1048576B": (10.0, 99.0)}
    return {
        "date": "2026-12-01 12:00",
        "machine": "test: 2 × CPU",
        "seconds": 5.0,
        "elapsed_s": 150,
        "results": [
            result(report.BASELINE, base, 10_000, 100),
            result(report.NATIVE, native, 12_900, 149),
            result(report.WASM, wasm, 13_000, 0),
        ],
    }


def test_targets_are_met_or_missed_by_the_numbers() -> None:
    """Each target flips to MISSED when its figure crosses the bound, and only that one."""
    assert all(line.startswith("met: ") for line in report.targets_check(document()))
    changes = {
        "echo throughput 50x8": (1, "50x8 32B", "rate", 199.0),
        "added p50 latency": (1, "1x1 32B", "p50_ms", 1.6),
        "echo.wasm 1x1 4 KiB": (2, "1x1 4096B", "rate", 69.0),
        "1 MiB echo": (2, "1x1 1048576B", "p50_ms", 100.0),
    }
    for target, (index, case, field, value) in changes.items():
        doc = copy.deepcopy(document())
        doc["results"][index]["throughput"][case][field] = value
        missed = [line for line in report.targets_check(doc) if line.startswith("MISSED")]
        assert len(missed) == 1
        assert target in missed[0]
    doc = copy.deepcopy(document())
    doc["results"][1]["idle_bytes_per_session"] = 13_100
    doc["results"][1]["broadcast_ms"] = 151
    missed = [line for line in report.targets_check(doc) if line.startswith("MISSED")]
    assert [m.split(" = ")[0] for m in missed] == [
        "MISSED: memory per idle session",
        "MISSED: broadcast to 1,000 sessions",
    ]


def test_without_the_wasm_configuration_its_targets_are_not_measured() -> None:
    doc = document()
    doc["results"].pop()
    lines = report.targets_check(doc)
    assert lines[-1].startswith("not measured: the echo.wasm targets")
    assert len(lines) == 5


def test_the_readme_block_is_replaced_between_its_markers_only() -> None:
    doc = document()
    text = f"before\n{report.BEGIN}\nold table\n{report.END}\nafter\n"
    updated = report.update_readme(text, report.readme_block(doc))
    assert updated.startswith("before\n")
    assert updated.endswith(f"{report.END}\nafter\n")
    assert "old table" not in updated
    assert "| provider + echo.wasm (local host) | 100 (0.10) |" in updated
    assert "| provider + native component | 300 (0.30) | 1.40 / 2.80 |" in updated
    assert "150 + 80" in updated  # the CPU column
    assert "met: 1 MiB echo through echo.wasm, p50 = 99 ms (target < 100 ms)" in updated
    assert "test: 2 × CPU" in updated
    assert report.update_readme(updated, report.readme_block(doc)) == updated  # idempotent
    with pytest.raises(SystemExit, match="markers"):
        report.update_readme("no markers here", report.readme_block(doc))
    with pytest.raises(SystemExit, match="markers"):
        report.update_readme(text + text, report.readme_block(doc))


def test_the_readme_holds_the_published_run() -> None:
    """The README's block is exactly what the generator makes of docs/bench-results.json."""
    doc = json.loads((ROOT / "docs" / "bench-results.json").read_text())
    readme = (ROOT / "README.md").read_text()
    assert report.readme_block(doc) in readme


def test_variant_specs() -> None:
    variant = Variant.parse("w8=link:DELIVERY_WINDOW=8,env:PROVIDER_X=1,URI=127.0.0.1:9")
    assert variant.name == "w8"
    assert variant.link == {"DELIVERY_WINDOW": "8"}
    assert variant.env == {"PROVIDER_X": "1"}
    assert variant.config == {"URI": "127.0.0.1:9"}
    for bad in ("w8", "=A=1", "w8=", "w8=nokey", "w8=other:A=1", "w8=A=1,=2"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected"):
            Variant.parse(bad)


def with_every_process(doc: dict[str, Any], cpus: int = 2) -> dict[str, Any]:
    """``doc`` as a run that watched the NATS server and the load generator too."""
    doc = copy.deepcopy(doc)
    doc["cpus"] = cpus
    for r in doc["results"]:
        for cpu in r["cpu_us_per_echo"].values():
            cpu["load"] = 50.0
            if r["name"] != report.BASELINE:
                cpu["nats"] = 30.0
    return doc


def test_the_ceiling_is_the_cpus_over_the_other_processes_cpu() -> None:
    """With 2 CPUs and component 80 + NATS 30 + load 50 µs per echo, a provider costing nothing
    would echo 2e6 / 160 = 12,500/s: 12.5 × the baseline's 1,000/s."""
    doc = with_every_process(document())
    native = doc["results"][1]
    assert report.ceiling(doc, native, "50x8 32B") == pytest.approx(12.5)
    assert report.ceiling(with_every_process(document(), cpus=4), native, "50x8 32B") == pytest.approx(25.0)
    native["cpu_us_per_echo"]["50x8 32B"]["component"] = 320.0
    assert report.ceiling(doc, native, "50x8 32B") == pytest.approx(5.0)
    line = next(t for t in report.targets_check(doc) if "echo throughput" in t)
    assert line.endswith("the load generator leave at most 5.00 on 2 CPUs to a provider costing nothing")
    assert line.startswith("met: ")  # the ceiling explains a figure, it never decides the target


def test_without_every_process_watched_there_is_no_ceiling() -> None:
    """An older run (no NATS or load figures, no CPU count) says nothing it cannot know."""
    doc = document()
    assert report.ceiling(doc, doc["results"][1], "50x8 32B") is None
    line = next(t for t in report.targets_check(doc) if "echo throughput" in t)
    assert line.endswith("(target >= 0.20)")
    partial = with_every_process(document())
    del partial["results"][1]["cpu_us_per_echo"]["50x8 32B"]["nats"]
    assert report.ceiling(partial, partial["results"][1], "50x8 32B") is None
    del partial["cpus"]
    assert report.ceiling(partial, partial["results"][2], "50x8 32B") is None


def test_the_budget_table_sums_every_process_and_the_cpus_they_kept_busy() -> None:
    doc = with_every_process(document())
    table = report.cpu_budget_table(doc).splitlines()
    header = "| 50x8 32B: CPU µs / echo | server | component | NATS | load generator | all | CPUs busy |"
    assert table[0] == header
    # baseline: server 100 + load 50 = 150 µs at 1,000/s = 0.15 CPUs; native: 150+80+30+50 at 201/s
    assert "| baseline (bare websockets) | 100 | — | — | 50 | 150 | 0.15 |" in table
    assert "| provider + native component | 150 | 80 | 30 | 50 | 310 | 0.06 |" in table
    assert "cpu_budget_table" not in report.readme_block(doc)
    assert "| 50x8 32B: CPU µs / echo |" in report.readme_block(doc)
    assert "on this run's 2 CPUs" in report.readme_block(doc)
