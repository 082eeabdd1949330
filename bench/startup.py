"""How long ``supportmesh up`` takes from nothing to every ``/readyz`` green, and ``demo``'s wall
time, beside the embedded engines alone (``supportmesh backends``) in the same run.

    python -m bench.startup [--rounds 3]

Each round, on a fresh data directory (cold: engines initialised from nothing) and again on the
same one (warm): the time from starting the command until every server's and the orchestrator
service's ``/readyz`` answers 200 (for ``backends``: until it prints its URLs). Then one
``supportmesh demo`` from nothing, timed to its exit. Target (issue 17): up cold <= 10 s.
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from clients.mesh import read_mesh

SUPPORTMESH = str(Path(sys.executable).parent / "supportmesh")


def environment(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTMESH_")}
    return env | {"SUPPORTMESH_DATA_DIR": str(data_dir)}


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def time_up(data_dir: Path) -> float:
    """Seconds from starting ``up`` until every /readyz answers 200."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [SUPPORTMESH, "up", "--free-ports"],
        env=environment(data_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while (mesh := read_mesh(data_dir)) is None or mesh.pid != proc.pid:
            assert proc.poll() is None, "up exited"
            time.sleep(0.02)
        probes = [url.removesuffix("/mcp") + "/readyz" for url in mesh.servers.values()]
        probes.append(f"{mesh.orchestrator}/readyz")
        with httpx.Client(timeout=5) as http:
            for probe in probes:
                while http.get(probe).status_code != 200:
                    time.sleep(0.02)
        return time.monotonic() - started
    finally:
        stop(proc)


def time_backends(data_dir: Path) -> float:
    """Seconds from starting ``backends`` until it prints its URLs (the engines answer)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [SUPPORTMESH, "backends"],
        env=environment(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        while b"SUPPORTMESH_KAFKA_BOOTSTRAP" not in proc.stdout.readline():
            assert proc.poll() is None, "backends exited"
        return time.monotonic() - started
    finally:
        stop(proc)


def time_demo(data_dir: Path) -> float:
    started = time.monotonic()
    subprocess.run(
        [SUPPORTMESH, "demo"], env=environment(data_dir), check=True, capture_output=True
    )
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for round_ in range(args.rounds):
            for name, measure in (("backends", time_backends), ("up", time_up)):
                folder = Path(workdir) / f"{name}-{round_}"
                times.setdefault(f"{name} cold", []).append(measure(folder))
                times.setdefault(f"{name} warm", []).append(measure(folder))
                shutil.rmtree(folder, ignore_errors=True)
        demo = time_demo(Path(workdir) / "demo")
    for name, seconds in times.items():
        each = ", ".join(f"{s:.1f}" for s in seconds)
        print(f"{name:<14} median {statistics.median(seconds):5.1f} s   ({each})")
    for state in ("cold", "warm"):
        ratio = statistics.median(times[f"up {state}"]) / statistics.median(
            times[f"backends {state}"]
        )
        print(f"up / backends, {state}: {ratio:.2f}x")
    print(f"demo from nothing: {demo:.1f} s")


if __name__ == "__main__":
    main()
