"""``sqdr bench``: what a user waits for (training, inference, the circuit engines), measured side by side in one run.

Each measurement runs in a fresh Python process, so its peak resident memory is its own and one engine's caches
cannot help another. Timings are medians from ``torch.utils.benchmark.Timer.blocked_autorange``. The machine
may be shared: compare the ratios printed at the end (both sides measured in the same run) rather than
absolute numbers. With ``--rounds N`` every case is measured once per round, round after round, so the two sides
of a ratio are measured minutes apart at most; rows and ratios are then medians over the rounds.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from argparse import ArgumentError
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from jsonargparse import ArgumentParser

from sqdr.errors import UserError

NAMES = ("train_step", "inference", "encoder", "epoch", "circuit", "noisy_circuit")
Grid = Literal["default", "full"]


@dataclass
class Case:
    """One measurement: what runs, on which engine, at which size, with which encoder implementation."""

    name: str  # one of NAMES
    engine: str = "fused"
    n_qubits: int = 9
    n_blocks: int = 2
    batch: int = 128
    encoder: str | None = None  # "fast" (SpikingEncoder) or "reference" (snnTorch stepped); None: no encoder
    noise: str | None = None  # a noise preset, e.g. "paper"
    layer: str = "sqdr"  # "sqdr", or "torchlayer": a plain QNode through qml.qnn.TorchLayer (lightning only)


def model_cases() -> list[Case]:
    """The paper model end to end (fused engine): training, its reference-encoder baseline, inference, noise."""
    return [
        *(Case("train_step", batch=b, encoder=e) for b in (16, 128) for e in ("fast", "reference")),
        Case("inference", batch=128, encoder="fast"),
        Case("inference", batch=1024, encoder="fast"),
        Case("train_step", batch=16, encoder="fast", noise="paper"),
        Case("encoder", batch=128, encoder="fast"),
        Case("encoder", batch=128, encoder="reference"),
        Case("epoch", batch=128, encoder="fast"),
    ]


def circuit_cases(grid: Grid) -> list[Case]:
    """Circuit engines, forward + backward. ``default`` is a bounded subset; ``full`` is qubits 2..16 x blocks 1..4.

    PennyLane engines get small batches: they take milliseconds (``lightning``) to seconds (``default.mixed``)
    per sample.
    """
    if grid == "full":
        sizes = [(n, layers) for n in range(2, 17) for layers in range(1, 5)]
        lightning_sizes = sizes
        mixed_sizes = [(n, 2) for n in (2, 4, 6, 8, 9)]
    else:
        sizes = [(2, 1), (4, 2), (9, 1), (9, 2), (9, 4), (12, 2), (16, 2)]
        lightning_sizes = [(4, 2), (9, 2)]
        mixed_sizes = [(4, 2)]
    cases = [Case("circuit", "fused", n, layers, batch=128) for n, layers in sizes]
    cases += [Case("circuit", "lightning", n, layers, batch=16) for n, layers in lightning_sizes]
    cases += [
        Case("circuit", "lightning", 9, 2, batch=16, layer="torchlayer"),
        Case("circuit", "default.qubit", 9, 2, batch=16),
        Case("noisy_circuit", "fused", 9, 2, batch=32, noise="paper"),
    ]
    cases += [Case("noisy_circuit", "default.mixed", n, layers, batch=2, noise="paper") for n, layers in mixed_sizes]
    return cases


def torchlayer_circuit(case: Case) -> torch.nn.Module:
    """The paper circuit as a user would write it: a QNode on ``lightning.qubit`` (adjoint) in a ``TorchLayer``."""
    import pennylane as qml

    from sqdr.models.engines.pennylane import reupload_circuit
    from sqdr.models.spec import CircuitSpec

    spec = CircuitSpec(case.n_qubits, case.n_blocks)
    device = qml.device("lightning.qubit", wires=spec.n_qubits)

    @qml.qnode(device, interface="torch", diff_method="adjoint")
    def qnode(inputs, weights):
        return reupload_circuit(spec, inputs.reshape(*inputs.shape[:-1], spec.n_qubits, 3), weights)

    layer = qml.qnn.TorchLayer(qnode, {"weights": (spec.n_blocks, spec.n_qubits, 3)})
    return torch.nn.Sequential(layer)


def _circuit_step(case: Case) -> Callable[[], None]:
    from sqdr.models import ReuploadCircuit

    if case.layer == "torchlayer":
        circuit = torchlayer_circuit(case)
    else:
        circuit = ReuploadCircuit(case.n_qubits, case.n_blocks, engine=case.engine, noise=case.noise)
    features = torch.rand(case.batch, 3 * case.n_qubits, requires_grad=True)

    def step() -> None:
        circuit.zero_grad()
        circuit(features).sum().backward()

    return step


def _model(case: Case) -> torch.nn.Module:
    """The paper model; with ``encoder="reference"`` its encoder is the snnTorch step-by-step formulation."""
    from sqdr.models import SQDRCNN
    from sqdr.models.encoder import ReferenceSpikingEncoder

    model = SQDRCNN(n_qubits=case.n_qubits, n_blocks=case.n_blocks, engine=case.engine, noise=case.noise)
    if case.encoder == "reference":
        reference = ReferenceSpikingEncoder(out_features=3 * case.n_qubits)
        reference.load_state_dict(model.encoder.state_dict())
        model.encoder = reference
    return model


def workload(case: Case) -> Callable[[], None]:
    """A closure doing one timed step of ``case``. Training steps of the fast encoder run as ``SQDRModule``'s do, with
    PyTorch's small operations on one thread (:mod:`sqdr.models.threads`); the step-by-step reference runs with
    PyTorch's default threads, as a plain snnTorch loop would."""
    from sqdr.models import threads

    torch.manual_seed(0)
    if case.name in ("circuit", "noisy_circuit"):
        return _circuit_step(case)
    model = _model(case)
    images = torch.rand(case.batch, 1, 28, 28)
    scope = threads.small_operations_serial if case.encoder == "fast" else contextlib.nullcontext
    if case.name == "encoder":

        def step() -> None:
            with scope():
                model.zero_grad()
                model.encode(images).sum().backward()

        return step
    if case.name == "inference":
        model.eval()

        def step() -> None:
            with torch.no_grad():
                model(images)

        return step
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    labels = torch.randint(0, 10, (case.batch,))

    def step() -> None:
        with scope():
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimiser.step()

    return step


def training_epoch(case: Case) -> tuple[int, float]:
    """One epoch of ``sqdr fit`` on all 60,000 Fashion-MNIST training images (no validation split), timed from
    ``Trainer.fit`` to its end: reading the data, the flips, the batches and Lightning's loop included; no
    validation, logger or checkpoint. Returns the images trained on and the seconds."""
    import time

    import lightning.pytorch as pl

    from sqdr.data import FashionMNISTDataModule
    from sqdr.module import SQDRModule

    data = FashionMNISTDataModule(batch_size=case.batch, val_fraction=0.0, augment=True)
    data.prepare_data()  # finding or fetching the files is not part of an epoch
    model = SQDRModule(_model(case), certify_engine="none")
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    started = time.perf_counter()
    trainer.fit(model, datamodule=data)
    return len(data.data_train), time.perf_counter() - started


def machine() -> dict:
    """What the numbers depend on: cores, threads, library versions."""
    import pennylane

    return {
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pennylane": pennylane.__version__,
        "python": platform.python_version(),
    }


def measure(case: Case, min_run_time: float) -> dict:
    """Run ``case`` in this process: median seconds per step over at least ``min_run_time`` seconds of steps (an
    ``epoch`` case is one timed epoch)."""
    from torch.utils.benchmark import Timer

    if case.name == "epoch":
        images, seconds = training_epoch(case)
        samples_per_s, median_s, runs = images / seconds, seconds, 1
    else:
        step = workload(case)
        step()  # warm-up: lazy devices, allocator, first-call dispatch
        # Timer runs single-threaded unless told otherwise; measure with the threads training uses.
        timer = Timer("step()", globals={"step": step}, num_threads=torch.get_num_threads())
        timing = timer.blocked_autorange(min_run_time=min_run_time)
        samples_per_s, median_s = case.batch / timing.median, timing.median
        runs = len(timing.times) * timing.number_per_run
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        **asdict(case),
        "samples_per_s": samples_per_s,
        "median_s": median_s,
        "runs": runs,
        "peak_mem_mb": round(peak_mb, 1),
        **machine(),
    }


# A measuring child configures its process as the `sqdr` command does (before this module imports torch); its
# errors still end in their exception's line, which run_isolated reports.
CHILD = "import sys; from sqdr.runtime import configure; configure(); from sqdr.bench import main; main(sys.argv[1:])"


def run_isolated(case: Case, min_run_time: float, timeout: float) -> dict:
    """Measure ``case`` in a child process (own peak memory, no shared caches)."""
    command = [sys.executable, "-c", CHILD, "--one", json.dumps(asdict(case)), "--min_time", str(min_run_time)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return {**asdict(case), "error": f"timed out after {timeout:.0f} s"}
    except subprocess.CalledProcessError as error:
        return {**asdict(case), "error": error.stderr.strip().splitlines()[-1] if error.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def label(row: dict) -> str:
    """A short readable name of a measurement."""
    parts = [row["name"], row["engine"]]
    if row.get("encoder"):
        parts.append(f"enc={row['encoder']}")
    if row.get("noise"):
        parts.append(f"noise={row['noise']}")
    if row.get("layer") == "torchlayer":
        parts.append("TorchLayer")
    return " ".join(parts)


def table_line(row: dict) -> str:
    shown = row.get("error") or f"{row['samples_per_s']:>12,.1f} {row['peak_mem_mb']:>9,.0f}"
    return f"{label(row):<44} {row['n_qubits']:>2} {row['n_blocks']:>2} {row['batch']:>5} {shown}"


def combine(rows: list[dict]) -> dict:
    """One case's measurements from several rounds as one row: the median throughput and step time, the largest
    peak memory; an error in any round is the row's error."""
    failed = next((row for row in rows if "error" in row), None)
    if failed is not None:
        return failed
    return {
        **rows[0],
        "samples_per_s": statistics.median(row["samples_per_s"] for row in rows),
        "median_s": statistics.median(row["median_s"] for row in rows),
        "runs": sum(row["runs"] for row in rows),
        "peak_mem_mb": max(row["peak_mem_mb"] for row in rows),
        "rounds": len(rows),
    }


def speedups(rows: list[dict]) -> dict[str, float]:
    """Side-by-side speed-ups within one round: fast vs reference encoder, sqdr vs TorchLayer, fused vs PennyLane."""
    done = [r for r in rows if "samples_per_s" in r]

    def find(**fields) -> dict | None:
        return next((r for r in done if all(r.get(k) == v for k, v in fields.items())), None)

    found = {}
    for r in done:
        key = {field: r[field] for field in ("name", "n_qubits", "n_blocks", "batch", "noise")}
        if r.get("encoder") == "reference" and (fast := find(**key, encoder="fast", engine=r["engine"])):
            found[f"{r['name']} batch {r['batch']}: fast encoder vs the snnTorch reference"] = (
                fast["samples_per_s"] / r["samples_per_s"]
            )
        if r.get("layer") == "torchlayer" and (ours := find(**key, engine="lightning", layer="sqdr")):
            found[f"circuit q={r['n_qubits']} L={r['n_blocks']}: sqdr lightning vs a TorchLayer QNode"] = (
                ours["samples_per_s"] / r["samples_per_s"]
            )
        if r["name"] in ("circuit", "noisy_circuit") and r["engine"] != "fused" and r.get("layer") == "sqdr":
            fused = find(name=r["name"], engine="fused", n_qubits=r["n_qubits"], n_blocks=r["n_blocks"])
            if fused:
                found[f"{r['name']} q={r['n_qubits']} L={r['n_blocks']}: fused vs {r['engine']}"] = (
                    fused["samples_per_s"] / r["samples_per_s"]
                )
    return found


def ratios(rounds: list[list[dict]], combined: list[dict]) -> list[str]:
    """The speed-ups as lines: per pair the median over rounds of the ratio within each round (and each round's
    ratio when there are several); the epoch's time as seconds, from its ``combined`` row."""
    lines = [
        f"one training epoch of {row['samples_per_s'] * row['median_s']:,.0f} Fashion-MNIST images at "
        f"batch {row['batch']}: {row['median_s']:.1f} s, data loading included"
        for row in combined
        if row["name"] == "epoch" and "samples_per_s" in row
    ]
    per_round = [speedups(rows) for rows in rounds]
    for pair in per_round[0]:
        values = [found[pair] for found in per_round if pair in found]
        ratio = statistics.median(values)
        shown = f"{ratio:.2f}x" if ratio < 100 else f"{ratio:,.0f}x"
        if len(values) > 1:
            shown += f" (rounds: {', '.join(f'{v:.3g}' for v in values)})"
        lines.append(f"{pair}: {shown}")
    return lines


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="sqdr bench",
        exit_on_error=False,
        description="Throughput (samples/s; forward + backward except 'inference') and peak memory of training "
        "and inference of the paper model (9 qubits, 2 blocks, fused engine; with the fast and the snnTorch "
        "reference encoder), noisy training, and the circuit engines across sizes. Each measurement runs in "
        "its own process; the ratios at the end compare measurements of the same run.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per measurement and line")
    parser.add_argument(
        "--only",
        type=list[str] | None,
        default=None,
        help=f"measurement names to run, e.g. '[train_step, inference]' (default: all of {list(NAMES)})",
    )
    parser.add_argument(
        "--grid",
        type=Grid,
        default="default",
        help="circuit sizes: 'default' (a bounded subset) or 'full' (qubits 2..16 x blocks 1..4, takes long)",
    )
    parser.add_argument("--min_time", type=float, default=2.0, help="seconds of timed steps per measurement")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every case once per round, round after round; rows and ratios are medians over the rounds "
        "(3 steadies the ratios on a shared machine, at three times the run time)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per measurement process")
    parser.add_argument("--one", type=str | None, default=None, help="measure one case (JSON) in this process")
    return parser


def select(cases: list[Case], only: list[str] | None) -> list[Case]:
    if not only:
        return cases
    unknown = sorted(set(only) - set(NAMES))
    if unknown:
        raise UserError(f"unknown measurement(s) {unknown} in --only; choose from {list(NAMES)}.")
    return [c for c in cases if c.name in only]


def main(argv: list[str] | None = None) -> None:
    """``sqdr bench``: run the measurements, print a table (or JSON lines) and the side-by-side ratios."""
    try:
        args = build_parser().parse_args(argv)
    except ArgumentError as error:
        raise UserError(f"{error}; see `sqdr bench --help`.") from None
    if args.min_time <= 0 or args.timeout <= 0:
        raise UserError("--min_time and --timeout must be positive numbers of seconds.")
    if args.rounds < 1:
        raise UserError(f"--rounds must be 1 or more, not {args.rounds}.")
    if args.one:
        print(json.dumps(measure(Case(**json.loads(args.one)), args.min_time)))
        return
    cases = select(model_cases() + circuit_cases(args.grid), args.only)
    if not args.json:
        print(" ".join(f"{k}={v}" for k, v in machine().items()) + f" rounds={args.rounds}")
        print(f"{'measurement':<44} {'q':>2} {'L':>2} {'batch':>5} {'samples/s':>12} {'peak MB':>9}")
    rounds, combined = [], []
    for number in range(1, args.rounds + 1):
        rows = []
        for index, case in enumerate(cases):
            rows.append(run_isolated(case, args.min_time, args.timeout))
            if number < args.rounds:
                print(f"round {number}/{args.rounds}: {table_line(rows[-1])}", file=sys.stderr, flush=True)
            else:  # the last round prints each case's median over all rounds
                combined.append(combine([measured[index] for measured in rounds] + [rows[-1]]))
                print(json.dumps(combined[-1]) if args.json else table_line(combined[-1]), flush=True)
        rounds.append(rows)
    if not args.json:
        for line in ratios(rounds, combined):
            print(line)


if __name__ == "__main__":
    main()
