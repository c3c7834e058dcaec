"""The ``sqdr`` command: ``fit|validate|test|predict`` through LightningCLI, plus ``sweep|noise|report|bench``."""

from __future__ import annotations

import csv
import os
import sys
import warnings
from pathlib import Path

from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from sqdr.data import DatasetNotFoundError, ImageDataModule
from sqdr.module import SQDRModule

TOOL_COMMANDS = {
    "sweep": "sqdr.sweep",
    "noise": "sqdr.robustness",
    "report": "sqdr.report",
    "bench": "sqdr.bench",
}

USAGE = """usage: sqdr {fit,validate,test,predict,sweep,noise,report,bench} ...

  fit|validate|test|predict   train and evaluate SQDR-CNN (LightningCLI; `sqdr fit --help`)
  sweep STUDY.yaml            Optuna hyperparameter study (`sqdr sweep --help`)
  noise                       accuracy of a trained checkpoint under hardware noise (`sqdr noise --help`)
  report                      tables and figures from studies and runs (`sqdr report --help`)
  bench                       engine throughput, side by side in one run (`sqdr bench --help`)
"""


def wandb_mode() -> str:
    """``online`` only when the user asked for it or has W&B credentials; otherwise ``offline``."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


class EpochLine(Callback):
    """One line per epoch for non-interactive runs (CI logs, batch jobs), where a progress bar is noise."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
        shown = "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
        print(f"epoch {trainer.current_epoch}: {shown}", flush=True)


class AppendingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing ``metrics.csv``; a resumed run must append to its history."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` that keeps the metrics of earlier epochs when a run is resumed in its own directory."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


class SQDRCLI(LightningCLI):
    """LightningCLI with sqdr's run layout: ``<runs_dir>/<experiment>/version_N/`` holds config, CSV, checkpoints."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--experiment", type=str, default="default", help="Run group name (runs_dir/experiment).")
        parser.add_argument("--runs_dir", type=str, default="runs", help="Where run directories are written.")
        parser.add_argument(
            "--logger", type=str, default="csv", choices=["csv", "wandb"], help="csv always; wandb adds W&B."
        )
        parser.add_argument("--wandb_project", type=str, default="sqdr", help="W&B project.")
        parser.add_argument("--wandb_group", type=str | None, default=None, help="W&B group (default: experiment).")
        parser.add_argument("--wandb_tags", type=list[str], default=[], help="W&B tags.")
        parser.add_argument("--test_after_fit", type=bool, default=False, help="Test the best checkpoint after fit.")
        parser.link_arguments("data.num_classes", "model.net.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_channels", "model.net.init_args.in_channels", apply_on="instantiate")
        parser.link_arguments("data.image_hw", "model.net.init_args.image_size", apply_on="instantiate")

    def _run_config(self):
        return self.config[self.subcommand] if self.subcommand else self.config

    def instantiate_trainer(self, **kwargs):
        config = self._run_config()
        callbacks = list(self._get(self.config_init, "trainer", default={}).get("callbacks") or [])
        loggers = self._make_loggers(config)
        if loggers:
            kwargs["logger"] = loggers
        if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            # An explicit folder: with fast_dev_run Lightning drops the loggers and would write to the cwd.
            dirpath = Path(loggers[0].log_dir) / "checkpoints" if loggers else None
            callbacks.append(
                ModelCheckpoint(dirpath, monitor="val/acc", mode="max", save_last=True, filename="best-{epoch}")
            )
        if not sys.stdout.isatty():
            callbacks.append(EpochLine())
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def _make_loggers(self, config) -> list[Logger]:
        if config.trainer.get("logger") not in (None, True):
            return []  # the user configured loggers explicitly
        version = self._resumed_version(config)
        loggers: list[Logger] = [RunCSVLogger(save_dir=config.runs_dir, name=config.experiment, version=version)]
        if config.logger == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            # Absolute: W&B's service process keeps the working directory it started in.
            run_dir = os.path.abspath(loggers[0].log_dir)
            os.makedirs(run_dir, exist_ok=True)
            loggers.append(
                WandbLogger(
                    project=config.wandb_project,
                    group=config.wandb_group or config.experiment,
                    tags=list(config.wandb_tags) or None,
                    name=f"{config.experiment}/{Path(run_dir).name}",
                    save_dir=run_dir,
                    offline=wandb_mode() == "offline",
                    config=self._flat_config(config),
                )
            )
        return loggers

    def _resumed_version(self, config) -> int | None:
        """``--ckpt_path last`` continues the newest run of the experiment, in its own directory."""
        if config.get("ckpt_path") != "last":
            return None
        experiment_dir = Path(config.runs_dir) / config.experiment
        versions = sorted(
            int(p.name.split("_")[1]) for p in experiment_dir.glob("version_*") if p.name.split("_")[1].isdigit()
        )
        if not versions or not (experiment_dir / f"version_{versions[-1]}" / "checkpoints" / "last.ckpt").exists():
            raise SystemExit(
                f"error: --ckpt_path last found no checkpoint to resume under {experiment_dir}/version_*/checkpoints/; "
                "run `sqdr fit` without --ckpt_path first, or pass a checkpoint file."
            )
        return versions[-1]

    @staticmethod
    def _flat_config(config) -> dict:
        keep = ("model", "data", "trainer", "experiment")
        return {k: v for k, v in config.as_dict().items() if k in keep}

    def after_fit(self) -> None:
        config = self._run_config()
        run_dir = self.trainer.log_dir
        if config.test_after_fit:
            checkpoint = self.trainer.checkpoint_callback
            best = "best" if checkpoint is not None and checkpoint.best_model_path else None
            results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best, verbose=False)
            accuracy = results[0]["test/acc"]
            which = "best checkpoint" if best else "final weights"
            print(f"test accuracy: {accuracy:.2%}  ({which}, {len(self.datamodule.data_test)} images)")
            for key, value in sorted(results[0].items()):
                if key.startswith("test/acc_"):
                    print(f"test accuracy on {key.removeprefix('test/acc_')}: {value:.2%} (certification subset)")
        self.finish_loggers()
        print(f"run written to {run_dir}")

    def finish_loggers(self) -> None:
        """Close the W&B run so its files are complete (and one process can start the next run)."""
        if any(type(logger).__name__ == "WandbLogger" for logger in self.trainer.loggers):
            import wandb

            wandb.finish()

    after_validate = after_test = after_predict = finish_loggers


def make_cli(args: list[str] | None = None, *, run: bool = True, callbacks: list[Callback] | None = None) -> SQDRCLI:
    """Build (and by default run) the LightningCLI; ``run=False`` with ``callbacks`` is how sweeps drive trials."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    return SQDRCLI(
        SQDRModule,
        ImageDataModule,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"enable_progress_bar": sys.stdout.isatty(), "callbacks": list(callbacks or [])},
        auto_configure_optimizers=False,
    )


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    if args[0] in TOOL_COMMANDS:
        import importlib

        importlib.import_module(TOOL_COMMANDS[args[0]]).main(args[1:])
        return
    try:
        make_cli(argv)
    except (DatasetNotFoundError, ValueError) as error:
        # A user's mistake (missing data, impossible configuration) deserves one sentence, not a traceback.
        if os.environ.get("SQDR_DEBUG"):
            raise
        print(f"error: {error}\n(set SQDR_DEBUG=1 to see the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
