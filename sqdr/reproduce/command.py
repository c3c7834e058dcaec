"""``sqdr reproduce``: its options (a typed dataclass parsed by jsonargparse) and its steps.

Steps: read the experiment set and the published results (mistakes cost seconds, not a training run), train or
collect every run, write tables and figures, run the noise study of the paper model, print where it all is.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from jsonargparse import ArgumentParser
from jsonargparse.typing import PositiveInt

from sqdr.errors import UserError
from sqdr.files import check_writable
from sqdr.options import options_from, options_parser
from sqdr.reproduce.noise_curves import write_noise_comparison
from sqdr.reproduce.plan import Plan, load_plan
from sqdr.reproduce.report import read_published, write_report
from sqdr.reproduce.runner import Record, execute

EXAMPLES = """examples:
  sqdr reproduce                                   # the quick budget: under 30 minutes on 2 CPU cores, offline
  sqdr reproduce --budget paper                    # the full protocol (downloads MNIST, KMNIST, CIFAR-10 once)
  sqdr reproduce --budget fashion_mnist --workers 2  # paper model and baselines on all of Fashion-MNIST, 2 at once
  sqdr reproduce --seeds '[0, 1, 2, 3, 4]' --out /tmp/results
"""


@dataclass(frozen=True)
class ReproduceOptions:
    """Which experiment set to train, where its runs and results go.

    Args:
        budget: A budget of the experiment set; the shipped one has 'quick' (small data, few epochs, offline),
            'fashion_mnist' (the paper model and the baselines on all of Fashion-MNIST, offline) and 'paper' (the
            full protocol). The budget defines the data sets, their sizes and epochs, the variants and the seeds.
        experiments: The experiment-set file: model variants as overrides of `sqdr fit` options, and per budget
            the data sets (config, overrides, variants), seeds and noise study.
        published: CSV of published spiking networks (dataset, model, accuracy, params, source) that the
            tables compare with.
        seeds: Seeds to train, overriding the budget's (at least 3 for a mean and standard deviation).
        runs_dir: Run directories go to <runs_dir>/<budget>/<data set>/<variant>/seed_<s>/; a run with a
            result.json there is collected instead of trained again.
        out: Tables go to <out>/tables/reproduce_<budget>*.csv|md, figures to <out>/figures/, the noise study to
            <out>/noise_<budget>_<data set>/.
        threads: Intra-op threads of every run (results depend on it: PyTorch splits sums by thread count).
        workers: Runs trained at once, in as many processes (threads x workers should not exceed the cores).
        noise: After training, run the budget's noise study: of the paper model (seed 0), or, where the budget
            names variants to compare, of every run of them under the same noise settings.
    """

    budget: str = "quick"
    experiments: str = "conf/reproduce/experiments.yaml"
    published: str = "conf/reproduce/published_snn.csv"
    seeds: list[int] | None = None
    runs_dir: str = "runs/reproduce"
    out: str = "results/reproduce"
    threads: PositiveInt = 1
    workers: PositiveInt = 1
    noise: bool = True


def build_parser() -> ArgumentParser:
    return options_parser(
        ReproduceOptions,
        prog="sqdr reproduce",
        description="The paper's evaluation with baselines and ablations, over seeds, resumable: finished runs are "
        "collected, interrupted ones trained again; then tables and figures.",
        examples=EXAMPLES,
        config_help="A YAML file of these options.",
    )


def parse_options(argv: list[str]) -> ReproduceOptions:
    return options_from(ReproduceOptions, build_parser(), argv)


def noise_study(plan: Plan, records: list[Record], out: Path) -> Path | None:
    """The accuracy of the paper model (seed 0 of the budget's noise data set) under every noise channel."""
    from sqdr.robustness import NoiseOptions, run

    spec = dict(plan.noise or {})
    dataset = spec.pop("dataset", None)
    finished = [r for r in records if (r["dataset"], r["variant"], r["status"]) == (dataset, "paper", "done")]
    if not finished:
        return None
    folder = out / f"noise_{plan.budget}_{dataset}"
    run(NoiseOptions(ckpt=finished[0]["run_dir"], out=str(folder), preset="paper", **spec))
    return folder


def progress(line: str) -> None:
    print(f"reproduce {line}", flush=True)


def reproduce(options: ReproduceOptions) -> list[Record]:
    plan = load_plan(options.experiments, options.budget, options.runs_dir, options.seeds)
    published = read_published(options.published)
    out = check_writable(options.out)
    if not plan.runs:
        raise UserError(f"{options.experiments}: budget {options.budget} has no runs (no data sets or variants).")
    print(f"reproduce {plan.budget}: {len(plan.runs)} runs" + (f" ({plan.about})" if plan.about else ""), flush=True)
    started = time.monotonic()
    records = execute(plan, options.threads, say=progress, workers=options.workers)
    written = write_report(records, published, out, plan.budget)
    noise = None
    if options.noise and plan.noise and "compare" in plan.noise:  # every run of the compared variants
        written += write_noise_comparison(records, plan.noise, out, plan.budget)
    elif options.noise and plan.noise:  # the paper model's study
        noise = noise_study(plan, records, out)
    done = sum(r["status"] == "done" for r in records)
    print(f"\nreproduce {plan.budget}: {done} of {len(records)} runs finished in {time.monotonic() - started:.0f} s")
    for path in written:
        print(f"wrote {path}")
    if noise is not None:
        print(f"noise study of the paper model: {noise}/")
    return records


def main(argv: list[str] | None = None) -> None:
    """``sqdr reproduce [options]``; user mistakes raise :class:`UserError`, which the dispatcher reports."""
    reproduce(parse_options(list(sys.argv[1:] if argv is None else argv)))
