"""How fast ``supportmesh --help`` answers, beside ``python -c pass`` on the same interpreter.

Each round runs the two commands in turn (so the machine's drift falls on both alike); the
report is the median of each and their ratio.

    python -m bench.cli_help [--rounds 20]
"""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

SUPPORTMESH = str(Path(sys.executable).parent / "supportmesh")


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    rounds = parser.parse_args().rounds
    baseline, helped = [], []
    for _ in range(rounds):
        baseline.append(timed([sys.executable, "-c", "pass"]))
        helped.append(timed([SUPPORTMESH, "--help"]))
    base, cli = statistics.median(baseline), statistics.median(helped)
    print(f"python -c pass      {base * 1000:7.0f} ms (median of {rounds})")
    print(f"supportmesh --help  {cli * 1000:7.0f} ms  = {cli / base:.1f}x python -c pass")


if __name__ == "__main__":
    main()
