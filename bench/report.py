"""What ``make bench`` makes of its numbers: the tables, the targets, the chart, the README block.

Everything here is computed from a ``results.json`` document (``bench.ws`` writes it), so the
README's benchmark section, ``docs/bench.png`` and ``docs/bench-results.json`` always come
from one run, and whether a target is met is decided by the numbers, never by hand.
``python -m bench.report bench/results/<time>/results.json`` publishes an earlier run again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
BEGIN = (
    "<!-- bench:begin: written by make bench (bench/report.py) from docs/bench-results.json; not by hand -->"
)
END = "<!-- bench:end -->"

BASELINE, NATIVE, WASM = (
    "baseline (bare websockets)",
    "provider + native component",
    "provider + echo.wasm (local host)",
)
TWO_INSTANCES = "provider × 2 instances + native component (≈ half the replies forwarded)"
BRIDGE = "v2 bridge + nats-py echo service"
CPU_CASE = "50x8 32B"
"""The case whose CPU per echo the main table shows (every case is in the CPU table)."""


def machine() -> str:
    """This machine in one line: host name, CPU model and count, kernel, Python."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{platform.node()}: {os.cpu_count()} × {model}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def cpus() -> int:
    """The CPUs this process may run on (what the benchmark's processes share)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


PROCESSES = {"server": "server", "component": "component", "nats": "NATS", "load": "load generator"}
"""The processes whose CPU a run watches, by their key in ``cpu_us_per_echo``, and their column."""


def _by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in doc["results"]}


def _cpu(result: dict[str, Any], case: str) -> str:
    row = result.get("cpu_us_per_echo", {}).get(case)
    if not row:
        return "—"
    parts = [f"{row['server']:,.0f}"]
    if "component" in row:
        parts.append(f"{row['component']:,.0f}")
    return " + ".join(parts)


def table(doc: dict[str, Any]) -> str:
    """One row per configuration: rates (ratio to the baseline), latencies, CPU, memory, broadcast."""
    results = doc["results"]
    base = results[0]
    cases = list(base["throughput"])
    header = (
        "| configuration | "
        + " | ".join(f"{k} msg/s (×) | {k} p50 / p99 ms" for k in cases)
        + f" | CPU µs / echo {CPU_CASE} (server + component)"
        + " | memory / idle session (×) | broadcast to 1,000 (×) |"
    )
    lines = [header, "|" + "---|" * (1 + 2 * len(cases) + 3)]
    for r in results:
        cells = [r["name"]]
        for key in cases:
            row = r["throughput"].get(key)
            if row is None:
                cells += ["—", "—"]
                continue
            ratio = row["rate"] / base["throughput"][key]["rate"]
            cells.append(
                f"{row['rate']:,.0f} ({ratio:.2f})"
                if row["rate"] >= 10
                else f"{row['rate']:.2f} ({ratio:.3f})"
            )
            cells.append(f"{row['p50_ms']:.2f} / {row['p99_ms']:.2f}")
        cells.append(_cpu(r, CPU_CASE))
        memory = r["idle_bytes_per_session"]
        cells.append(
            f"{memory / 1024:.1f} KiB ({memory / base['idle_bytes_per_session']:.2f})" if memory else "—"
        )
        if r["broadcast_ms"]:
            cells.append(f"{r['broadcast_ms']:.1f} ms ({r['broadcast_ms'] / base['broadcast_ms']:.2f})")
        else:
            cells.append("— (echo.wasm does not broadcast)" if r["name"] == WASM else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_table(doc: dict[str, Any]) -> str:
    """CPU µs per echo in every case: the process clients talk to, plus the component's where separate."""
    results = doc["results"]
    cases = list(results[0]["throughput"])
    lines = [
        "| CPU µs / echo (server + component) | " + " | ".join(cases) + " |",
        "|" + "---|" * (1 + len(cases)),
    ]
    for r in results:
        lines.append("| " + " | ".join([r["name"], *(_cpu(r, k) for k in cases)]) + " |")
    return "\n".join(lines)


def cpu_budget_table(doc: dict[str, Any], case: str = CPU_CASE) -> str:
    """Where the CPU of one case goes, per process, and how many CPUs all of them kept busy
    (their CPU per echo × echoes per second): with fewer CPUs than busy processes, a
    configuration's rate is bounded by the sum, not by its server alone."""
    lines = [
        f"| {case}: CPU µs / echo | " + " | ".join(PROCESSES.values()) + " | all | CPUs busy |",
        "|" + "---|" * (len(PROCESSES) + 3),
    ]
    for r in doc["results"]:
        cpu = r.get("cpu_us_per_echo", {}).get(case)
        throughput = r["throughput"].get(case)
        if not cpu or throughput is None:
            continue
        cells = [f"{cpu[key]:,.0f}" if key in cpu else "—" for key in PROCESSES]
        total = sum(cpu.values())
        busy = total * throughput["rate"] / 1e6
        lines.append("| " + " | ".join([r["name"], *cells, f"{total:,.0f}", f"{busy:.2f}"]) + " |")
    return "\n".join(lines)


def ceiling(doc: dict[str, Any], result: dict[str, Any], case: str) -> float | None:
    """The best ratio to the baseline ``result`` could reach in ``case`` if its server cost nothing:
    the run's CPUs divided by the CPU per echo of its other processes (component, NATS, load
    generator), over the baseline's rate. ``None`` when the run did not watch them all."""
    cpu = result.get("cpu_us_per_echo", {}).get(case, {})
    base = _by_name(doc).get(BASELINE)
    if not doc.get("cpus") or base is None or not all(key in cpu for key in PROCESSES):
        return None
    others = sum(us for key, us in cpu.items() if key != "server")
    return float(doc["cpus"] * 1e6 / others / base["throughput"][case]["rate"])


def targets_check(doc: dict[str, Any]) -> list[str]:
    """Every target, each as one line saying met, MISSED or not measured, with the figure it was judged by."""
    results = _by_name(doc)
    base, native, wasm = results.get(BASELINE), results.get(NATIVE), results.get(WASM)
    checks: list[tuple[bool | None, str]] = []
    if base and native:
        ratio = native["throughput"]["50x8 32B"]["rate"] / base["throughput"]["50x8 32B"]["rate"]
        added = native["throughput"]["1x1 32B"]["p50_ms"] - base["throughput"]["1x1 32B"]["p50_ms"]
        limit = ceiling(doc, native, "50x8 32B")
        bound = (
            f"; at their CPU per echo the component, NATS and the load generator leave at most "
            f"{limit:.2f} on {doc['cpus']} CPUs to a provider costing nothing"
            if limit is not None
            else ""
        )
        checks += [
            (ratio >= 0.20, f"echo throughput 50x8 32 B = {ratio:.2f} x baseline (target >= 0.20){bound}"),
            (added <= 1.0, f"added p50 latency, 1 connection = {added:.2f} ms (target <= 1 ms)"),
        ]
        if native["idle_bytes_per_session"] and native["broadcast_ms"]:
            memory = native["idle_bytes_per_session"] / base["idle_bytes_per_session"]
            broadcast = native["broadcast_ms"] / base["broadcast_ms"]
            checks += [
                (memory <= 1.3, f"memory per idle session = {memory:.2f} x baseline (target <= 1.3)"),
                (
                    broadcast <= 1.5,
                    f"broadcast to 1,000 sessions = {broadcast:.2f} x baseline (target <= 1.5)",
                ),
            ]
    if wasm:
        rows = wasm["throughput"]
        if "1x1 4096B" in rows:
            ratio = rows["1x1 4096B"]["rate"] / rows["1x1 32B"]["rate"]
            checks.append(
                (ratio >= 0.7, f"echo.wasm 1x1 4 KiB = {ratio:.2f} x its 32 B rate (target >= 0.7)")
            )
        if "1x1 1048576B" in rows:
            p50 = rows["1x1 1048576B"]["p50_ms"]
            checks.append((p50 < 100, f"1 MiB echo through echo.wasm, p50 = {p50:,.0f} ms (target < 100 ms)"))
    else:
        checks.append((None, "the echo.wasm targets (4 KiB rate, 1 MiB p50): configuration not run"))
    words = {True: "met", False: "MISSED", None: "not measured"}
    return [f"{words[ok]}: {text}" for ok, text in checks]


def chart(doc: dict[str, Any], path: Path) -> None:
    """Rates, p50 latencies, CPU per echo and memory per idle session, one bar per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = doc["results"]
    keys = list(results[0]["throughput"])
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.8), gridspec_kw={"width_ratios": [3, 3, 1.4, 1.4]})
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        xs = [k + i * width for k in range(len(keys))]
        axes[0].bar(xs, [r["throughput"].get(k, {}).get("rate", 0) for k in keys], width, label=r["name"])
        axes[1].bar(xs, [r["throughput"].get(k, {}).get("p50_ms", 0) for k in keys], width, label=r["name"])
    for ax, title in ((axes[0], "echo messages/s"), (axes[1], "p50 latency (ms)")):
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))], keys, fontsize=8)
        ax.set_title(title)
        ax.set_yscale("log")
    names = [r["name"].split(" (")[0].replace(" component", "").replace(" + ", " +\n") for r in results]
    positions = range(len(results))
    cpu = [r.get("cpu_us_per_echo", {}).get(CPU_CASE, {}) for r in results]
    server = [c.get("server", 0) for c in cpu]
    axes[2].bar(positions, server, color="tab:blue", label="server / provider")
    axes[2].bar(
        positions, [c.get("component", 0) for c in cpu], bottom=server, color="tab:orange", label="component"
    )
    axes[2].set_title(f"CPU µs per echo, {CPU_CASE}")
    axes[2].legend(fontsize=7)
    axes[3].bar(positions, [r["idle_bytes_per_session"] / 1024 for r in results], color="tab:gray")
    axes[3].set_title("KiB per idle session")
    for ax in axes[2:]:
        ax.set_xticks(positions, names, fontsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"provider vs bare websockets · {doc['machine']} · {doc['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def readme_block(doc: dict[str, Any]) -> str:
    """The README's benchmark results, between the markers."""
    notes = "; ".join(f"`{name}`: {spec}" for name, spec in doc.get("variants", {}).items())
    variants = f" Variants measured in the same run: {notes}." if notes else ""
    return "\n".join(
        [
            BEGIN,
            f"Latest run, {doc['date']}, on {doc['machine']}; {doc['seconds']:g} s per throughput row, "
            f"{doc['elapsed_s']:.0f} s in all.{variants} Ratios to the baseline in brackets; CPU is per "
            "echo, of the process clients talk to (+ the component's process where it is separate):",
            "",
            table(doc),
            "",
            cpu_table(doc),
            "",
            f"Where the CPU of {CPU_CASE} goes, every process included, on this run's "
            f"{doc.get('cpus', '?')} CPUs (CPUs busy = all × rate):",
            "",
            cpu_budget_table(doc),
            "",
            "![benchmark chart](docs/bench.png)",
            "",
            "Targets, checked by the run:",
            "",
            "```",
            *targets_check(doc),
            "```",
            END,
        ]
    )


def update_readme(text: str, block: str) -> str:
    """``text`` with the part between the markers replaced by ``block`` (both markers must be there)."""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if len(pattern.findall(text)) != 1:
        raise SystemExit(f"README.md must hold the benchmark markers exactly once:\n{BEGIN}\n…\n{END}")
    return pattern.sub(lambda _: block, text)


def publish(results_json: Path, readme: Path = README, docs: Path = DOCS) -> None:
    """Copy a run's numbers and chart to ``docs/`` and rewrite the README's results from them."""
    doc = json.loads(results_json.read_text())
    docs.mkdir(exist_ok=True)
    if results_json.resolve() != (docs / "bench-results.json").resolve():
        shutil.copyfile(results_json, docs / "bench-results.json")
    chart(doc, docs / "bench.png")
    readme.write_text(update_readme(readme.read_text(), readme_block(doc)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("results", type=Path, help="a results.json written by make bench")
    publish(parser.parse_args().results)


if __name__ == "__main__":
    main()
