"""``sqdr bench``: throughput of the engines, measured side by side in one run.

Each measurement runs in a fresh Python process, so its peak resident memory is its own and one engine's
caches cannot help another. Timings are medians of repeats after a warm-up; the machine may be shared,
so compare the ratios printed at the end rather than absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch


@dataclass
class Case:
    """One measurement: what runs, on which engine, at which size."""

    name: str  # circuit | noisy_circuit | encoder | train_step | inference
    engine: str
    n_qubits: int = 9
    n_blocks: int = 2
    batch: int = 128
    repeats: int = 5


def default_cases(quick: bool) -> list[Case]:
    """The paper's circuit (9 qubits, 2 blocks) on every engine; PennyLane engines get fewer repeats."""
    slow_repeats = 1 if quick else 3
    return [
        Case("circuit", "fused", repeats=20),
        Case("circuit", "lightning", repeats=slow_repeats),
        Case("circuit", "default.qubit", repeats=slow_repeats),
        Case("noisy_circuit", "fused", batch=32, repeats=20),
        # default.mixed needs seconds per sample at 9 qubits: a batch of 2 bounds the time it takes.
        Case("noisy_circuit", "default.mixed", batch=2, repeats=1),
        Case("encoder", "fused", repeats=10),
        Case("train_step", "fused", repeats=10),
        Case("inference", "fused", repeats=10),
    ]


def _workload(case: Case):
    """A closure doing one timed step of ``case``."""
    from sqdr.models import SQDRCNN, ReuploadCircuit

    torch.manual_seed(0)
    if case.name in ("circuit", "noisy_circuit"):
        noise = "paper" if case.name == "noisy_circuit" else None
        circuit = ReuploadCircuit(case.n_qubits, case.n_blocks, engine=case.engine, noise=noise)
        features = torch.rand(case.batch, 3 * case.n_qubits, requires_grad=True)

        def step():
            circuit.zero_grad()
            circuit(features).sum().backward()

        return step
    model = SQDRCNN(n_qubits=case.n_qubits, n_blocks=case.n_blocks, engine=case.engine)
    images = torch.rand(case.batch, 1, 28, 28)
    if case.name == "encoder":
        def step():
            model.zero_grad()
            model.encode(images).sum().backward()

        return step
    if case.name == "inference":
        model.eval()

        def step():
            with torch.no_grad():
                model(images)

        return step
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    labels = torch.randint(0, 10, (case.batch,))

    def step():
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimiser.step()

    return step


def measure(case: Case) -> dict:
    """Run ``case`` in this process: median samples/s over ``repeats`` after one warm-up step."""
    step = _workload(case)
    step()
    times = []
    for _ in range(case.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        **asdict(case),
        "samples_per_s": case.batch / statistics.median(times),
        "median_s": statistics.median(times),
        "peak_mem_mb": round(peak_mb, 1),
        "threads": torch.get_num_threads(),
    }


def run_isolated(case: Case, timeout: float) -> dict:
    """Measure ``case`` in a child process (own peak memory, no shared caches)."""
    command = [sys.executable, "-m", "sqdr.bench", "--one", json.dumps(asdict(case))]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return {**asdict(case), "error": f"timed out after {timeout:.0f} s"}
    except subprocess.CalledProcessError as error:
        return {**asdict(case), "error": error.stderr.strip().splitlines()[-1] if error.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratios(results: list[dict]) -> list[str]:
    """``fused`` throughput over each reference engine's, for the same measurement."""
    lines = []
    fused = {r["name"]: r for r in results if r["engine"] == "fused" and "samples_per_s" in r}
    for r in results:
        if r["engine"] != "fused" and "samples_per_s" in r and r["name"] in fused:
            ratio = fused[r["name"]]["samples_per_s"] / r["samples_per_s"]
            lines.append(f"{r['name']}: fused is {ratio:,.0f}x {r['engine']}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="sqdr bench",
        description="Throughput (samples/s, forward + backward unless 'inference') and peak memory of the "
        "engines on the paper's circuit (9 qubits, 2 blocks), measured side by side in one run.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per measurement and line")
    parser.add_argument("--quick", action="store_true", help="one repeat for the slow PennyLane engines")
    parser.add_argument("--only", default="", help="comma-separated measurement names to run (default: all)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per measurement")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(Case(**json.loads(args.one)))))
        return
    cases = default_cases(args.quick)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {c.name for c in cases}
        if unknown:
            parser.error(f"unknown measurement(s) {sorted(unknown)}; choose from circuit, noisy_circuit, encoder, train_step, inference")
        cases = [c for c in cases if c.name in wanted]
    results = []
    for case in cases:
        result = run_isolated(case, args.timeout)
        results.append(result)
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            shown = result.get("error") or f"{result['samples_per_s']:>10,.1f} samples/s  peak {result['peak_mem_mb']:>7,.0f} MB"
            print(f"{case.name:<14} {case.engine:<14} q={case.n_qubits} L={case.n_blocks} batch={case.batch:<4} {shown}", flush=True)
    if not args.json:
        for line in ratios(results):
            print(line)


if __name__ == "__main__":
    main()
