"""``make fuzz``: coverage-guided fuzzing (atheris, libFuzzer) of the wRPC codec and call state machines.

    python -m fuzz.run --seconds 180     # what make fuzz runs (FUZZ_SECONDS=180 by default)

Runs the fuzzer in a child process for the given time (libFuzzer's ``-max_total_time``), with
the wRPC modules instrumented for coverage, then prints the inputs tried, inputs per
second and the crashes found. Exits non-zero if there was one: the input is saved as
``build/fuzz/crash-*`` (replay it with ``python -m fuzz.run --replay FILE``). The corpus
grows in ``build/fuzz/corpus`` (ignored by git), so each run starts where the last stopped.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

OUT = Path("build/fuzz")
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")


def child(argv: list[str]) -> None:
    """The fuzzing process: instrument, then hand over to libFuzzer."""
    import atheris  # the fuzz extra: only this process needs it

    with atheris.instrument_imports(include=["provider.wrpc"]):
        from fuzz.harness import one_input

    def test_one_input(data: bytes) -> None:
        one_input(atheris.FuzzedDataProvider(data))

    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


def replay(path: Path) -> None:
    """Run one saved input without the fuzzer, so its traceback shows."""
    import atheris

    from fuzz.harness import one_input

    one_input(atheris.FuzzedDataProvider(path.read_bytes()))
    print(f"{path}: no failure")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=180, help="how long to fuzz")
    parser.add_argument("--replay", type=Path, help="run one saved input and stop")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        child([sys.argv[0], *rest])
        return
    if args.replay:
        replay(args.replay)
        return
    corpus = OUT / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "fuzz.run",
        "--child",
        f"-max_total_time={args.seconds}",
        f"-artifact_prefix={OUT}/",
        "-max_len=1024",
        "-print_final_stats=1",
        "-use_value_profile=1",
        str(corpus),
    ]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    output = done.stdout + done.stderr
    match = _DONE.search(output)
    runs = int(match.group(1)) if match else 0
    crashed = done.returncode != 0
    print(
        f"fuzz: {runs:,} inputs in {elapsed:.0f} s ({runs / elapsed:,.0f} inputs/s), "
        f"crashes: {1 if crashed else 0}, corpus: {len(list(corpus.iterdir()))} inputs"
    )
    if crashed:
        print(output[-6000:], file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
