"""``sqdr fit|validate|test|predict``: the LightningCLI of SQDR-CNN, with sqdr's run layout.

Every run writes ``<runs_dir>/<experiment>/version_N/`` with ``config.yaml``, ``metrics.csv``, ``hparams.yaml``
and ``checkpoints/``. ``--ckpt_path last`` continues the newest run of the experiment that has a checkpoint, in
its own directory; a checkpoint's model options win over defaults, and contradict explicit options only with an
error that says which.
"""

from __future__ import annotations

import inspect
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from jsonargparse.typing import PositiveInt
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from sqdr.callbacks import default_callbacks
from sqdr.checkpoint_io import AtomicCheckpointIO
from sqdr.data import ImageDataModule
from sqdr.errors import UserError, debug_enabled
from sqdr.files import check_writable
from sqdr.loggers import RunCSVLogger, wandb_mode
from sqdr.models import SQDRCNN
from sqdr.module import SQDRModule
from sqdr.runs import read_checkpoint, resumable_checkpoint, run_dir_of

#: Option values of earlier releases, and what replaced them.
RENAMED_OPTIONS = {
    "model.optimizer": ("adam adamw sgd", "a class such as torch.optim.Adam (options under model.optimizer.init_args)"),
    "model.scheduler": (
        "none cosine step",
        "a class such as {class_path: torch.optim.lr_scheduler.CosineAnnealingLR, init_args: {T_max: EPOCHS}}",
    ),
}

#: What the data gives the network (the checkpoint's ``net.init_args`` key, the data module's attribute, in words).
DATA_SHAPES = (("in_channels", "in_channels", "channel(s)"), ("num_classes", "num_classes", "classes"),
               ("image_size", "image_hw", "pixels per image side"))  # fmt: skip

#: Model options that change the network's shape or function: a checkpoint and an explicit option must agree.
SHAPE_OPTIONS = (
    "time_steps", "n_qubits", "n_blocks", "coding", "encoder_channels", "convolution", "neuron",
    "entangler", "head", "head_hidden", "head_relu",
)  # fmt: skip


class SQDRParser(LightningArgumentParser):
    """The fit CLI's parser: a bad option or value ends as one :class:`UserError` line, not usage and a dump."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # jsonargparse's inner parsers: their caller handles the ArgumentError
            super().error(message, ex)
        subcommand = [word for word in self.prog.split()[1:] if not word.startswith("[")]  # "sqdr [options] test"
        command = f"sqdr {subcommand[-1] if subcommand else 'fit'}"
        error = UserError(f"{parse_error_line(message)}; see `{command} --help`.")
        if debug_enabled():
            raise error from ex
        raise error from None


def parse_error_line(message: str) -> str:
    """jsonargparse's nested message as ``--option: reason``.

    It nests one ``Parser key "k":`` level per option and class, and for a union (``int | None``, a preset name or
    a dict, ...) lists why each alternative failed; the reason that matters is the one alternative that is not a
    mere type mismatch, else the types that would have been accepted.
    """
    keys, reason = _reduce_parse_error(message.splitlines())
    return f"--{'.'.join(keys)}: {reason}" if keys else reason


def _reduce_parse_error(lines: list[str]) -> tuple[list[str], str]:
    keys: list[str] = []
    lines = [line for line in lines if line.strip() and "- Expected a path but" not in line]  # not a config file
    while lines:
        line = lines[0].strip()
        if line.startswith('Parser key "'):
            key, _, rest = line.removeprefix('Parser key "').partition('"')
            keys.append(key)
            lines = ([rest.removeprefix(":").strip()] if rest.removeprefix(":").strip() else []) + lines[1:]
        elif line.startswith("Problem with given class_path") and line.endswith(":"):
            keys.append("init_args")
            lines = lines[1:]
        else:
            break
    if not lines:
        return keys, "invalid value"
    if lines[0].strip().removeprefix("- ") != "Does not validate against any of the Union subtypes":
        return keys, _plain_reason(" ".join(line.strip().removeprefix("- ") for line in lines))
    indent = next(len(line) - len(line.lstrip()) for line in lines if line.strip() == "Errors:")
    alternatives: list[list[str]] = []
    given = ""
    for line in lines:
        depth, text = len(line) - len(line.lstrip()), line.strip()
        if depth == indent and text.startswith("Given value: "):
            given = text.removeprefix("Given value: ")
        elif depth == indent + 2 and text.startswith("- "):
            alternatives.append([line[depth + 2:]])
        elif depth > indent + 2 and alternatives:
            alternatives[-1].append(line)
    expected, real = [], []
    for alternative in alternatives:
        first = alternative[0].strip()
        if len(alternative) == 1 and first.startswith("Expected a ") and ". Got value" not in first:
            expected.append(_plain_reason(first.removeprefix("Expected a ")))
        else:
            real.append(alternative)
    if real:  # the alternative that got past its type check failed for a reason of its own
        text = "\n".join(real[0])
        if 'Parser key "' in text:
            inner_keys, reason = _reduce_parse_error(text[text.index('Parser key "'):].splitlines())
            return keys + inner_keys, reason
        return keys, f"{_plain_reason(' '.join(line.strip() for line in real[0]))} (given {given})"
    return keys, f"expected {', '.join(expected[:-1]) + ' or ' if len(expected) > 1 else ''}{expected[-1]}, got {given}"


def _plain_reason(reason: str) -> str:
    """Type names as a user writes them: ``<class 'int'>`` -> ``int``, ``NoneType`` -> ``null``."""
    for verbose, plain in (("<class '", ""), ("'>", ""), ("jsonargparse.typing.", ""), ("typing.", ""),
                           ("collections.abc.", ""), ("NoneType", "null"), (". Got value: ", ", got "),
                           ("Expected a ", "expected ")):  # fmt: skip
        reason = reason.replace(verbose, plain)
    return reason.split(", got Namespace(")[0].rstrip(".")


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
        parser.add_argument(
            "--checkpoint_every_n_steps", type=PositiveInt | None, default=None,
            help="Also save last.ckpt every N training steps, so a long epoch can be resumed from within (exactly).",
        )
        parser.link_arguments("data.num_classes", "model.net.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_channels", "model.net.init_args.in_channels", apply_on="instantiate")
        parser.link_arguments("data.image_hw", "model.net.init_args.image_size", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Refuse the option values of earlier releases by name, then resolve checkpoints."""
        _refuse_renamed_options(list(args or []) if not isinstance(args, dict) else [])
        super().parse_arguments(parser, args)
        self._resolve_checkpoint()

    # -- checkpoints ---------------------------------------------------------------------------------
    def _resolve_checkpoint(self) -> None:
        """Resolve ``--ckpt_path last`` to a file, refuse unreadable checkpoints and options that contradict one."""
        config = self._run_config()
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path:
            return
        if ckpt_path == "last":
            experiment_dir = Path(config.runs_dir) / config.experiment
            found = resumable_checkpoint(experiment_dir)
            if found is None:
                raise UserError(
                    f"--ckpt_path last found no checkpoint to resume under {experiment_dir}/version_*/checkpoints/; "
                    "run `sqdr fit` without --ckpt_path first, or pass a checkpoint file."
                )
            config.ckpt_path = ckpt_path = str(found)
        checkpoint = read_checkpoint(ckpt_path)
        self._check_conflicts(checkpoint.get("hyper_parameters", {}), ckpt_path)
        self._resume = (Path(ckpt_path), int(checkpoint.get("global_step", 0)))
        self._checkpoint_net = (checkpoint.get("hyper_parameters", {}).get("net") or {}).get("init_args") or {}

    def _check_conflicts(self, hparams: dict[str, Any], ckpt_path: str) -> None:
        """An option set away from its default that disagrees with the checkpoint's model is an error."""
        stored = (hparams.get("net") or {}).get("init_args") or {}
        given = self._run_config().model.net.init_args
        defaults = inspect.signature(SQDRCNN).parameters
        for key in SHAPE_OPTIONS:
            if key not in stored or key not in given:
                continue
            value, default = given[key], defaults[key].default
            if _plain(value) != _plain(stored[key]) and _plain(value) != _plain(default):
                raise UserError(
                    f"--model.net.init_args.{key} is {_plain(value)!r}, but the checkpoint {ckpt_path} holds a model "
                    f"with {key}={_plain(stored[key])!r}; drop the option to use the checkpoint's model, or train a "
                    "new run without --ckpt_path."
                )

    def _check_data_matches_checkpoint(self) -> None:
        """Data whose images or classes differ from the checkpoint's model is refused before any weight is loaded
        (the state dict would fail with a tensor-size error) and before a run directory is claimed."""
        stored, resume = getattr(self, "_checkpoint_net", None), getattr(self, "_resume", None)
        if not stored or resume is None:
            return
        data = type(self.datamodule).__name__
        for key, attribute, words in DATA_SHAPES:
            given = getattr(self.datamodule, attribute, None)
            if key in stored and given is not None and _plain(stored[key]) != _plain(given):
                raise UserError(
                    f"the checkpoint {resume[0]} holds a model for {_plain(stored[key])} {words}, but the data "
                    f"({data}) gives {_plain(given)} {words}; use the data it was trained on (drop the --data "
                    "options that change it), or train a new run on this data."
                )

    def _run_config(self):
        return self.config[self.config.subcommand] if self.config.get("subcommand") else self.config

    # -- trainer -------------------------------------------------------------------------------------
    def instantiate_trainer(self, **kwargs: Any):
        self._check_data_matches_checkpoint()
        config = self._run_config()
        callbacks = list(self._get(self.config_init, "trainer", default={}).get("callbacks") or [])
        loggers = self._make_loggers(config)
        if loggers:
            kwargs["logger"] = loggers
        if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            # An explicit folder: with fast_dev_run Lightning drops the loggers and would write to the cwd.
            dirpath = Path(loggers[0].log_dir) / "checkpoints" if loggers else None
            # Both write last.ckpt (no "-v1" copies): it is always the newest state, at an epoch's end or within.
            callbacks.append(
                ModelCheckpoint(
                    dirpath, monitor="val/acc", mode="max", save_last=True, filename="best-{epoch}",
                    enable_version_counter=False,
                )
            )
            every = self._run_config().get("checkpoint_every_n_steps")
            if every:
                callbacks.append(
                    ModelCheckpoint(
                        dirpath, every_n_train_steps=every, save_last=True, save_top_k=0, enable_version_counter=False
                    )
                )
        kwargs["callbacks"] = [*callbacks, *default_callbacks(interactive=sys.stdout.isatty())]
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except BaseException:  # e.g. an accelerator this machine lacks: no empty run directory is left behind
            for logger in loggers:
                if isinstance(logger, RunCSVLogger):
                    logger.finalize("failed")
            raise
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not one the user configured in plugins
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def _make_loggers(self, config) -> list[Logger]:
        if config.trainer.get("logger") not in (None, True):
            return []  # the user configured loggers explicitly
        resume = getattr(self, "_resume", None)
        version, resume_step = None, None
        if resume is not None and self.config.get("subcommand") == "fit":
            run_dir = run_dir_of(resume[0])
            if run_dir.parent == Path(config.runs_dir) / config.experiment:
                version, resume_step = run_dir.name.removeprefix("version_"), resume[1]
                version = int(version) if version.isdigit() else version
        check_writable(config.runs_dir)
        # version=None: a new run, which claims its own version_N (atomically) when its directory is first asked for.
        loggers: list[Logger] = [
            RunCSVLogger(save_dir=config.runs_dir, name=config.experiment, version=version, resume_step=resume_step)
        ]
        if config.logger == "wandb":
            loggers.append(self._wandb_logger(config, Path(loggers[0].log_dir)))
        return loggers

    def _wandb_logger(self, config, run_dir: Path) -> Logger:
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        # Absolute: W&B's service process keeps the working directory it started in.
        run_dir = run_dir.resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        keep = ("model", "data", "trainer", "experiment")
        # The run is started here and handed over: WandbLogger's own start passes W&B a deprecated setting
        # that prints a warning on every run.
        run = wandb.init(
            project=config.wandb_project,
            group=config.wandb_group or config.experiment,
            tags=list(config.wandb_tags) or None,
            name=f"{config.experiment}/{run_dir.name}",
            dir=str(run_dir),
            mode=wandb_mode(),
            config={k: v for k, v in config.as_dict().items() if k in keep},
        )
        return WandbLogger(experiment=run)

    # -- after each sub-command ----------------------------------------------------------------------
    def after_fit(self) -> None:
        config = self._run_config()
        if config.test_after_fit:
            checkpoint = self.trainer.checkpoint_callback
            best = "best" if checkpoint is not None and checkpoint.best_model_path else None
            results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best, verbose=False)
            tested = min(len(self.datamodule.data_test), sum(self.trainer.num_test_batches) * self.datamodule.hparams.batch_size)
            which = "best checkpoint" if best else "final weights"
            print(f"test accuracy: {results[0]['test/acc']:.2%}  ({which}, {tested} images)")
            certified = {k.removeprefix("test/acc_"): v for k, v in results[0].items() if k.startswith("test/acc_")}
            subset = certified.pop("certified_subset", None)
            samples = self.model.certification.samples
            images = "every test image" if samples == "all" else f"the first {samples} test images"
            for engine, value in certified.items():
                gap = results[0][f"test/max_logit_diff_{engine}"]
                print(f"certified on {engine}: {value:.2%} on {images}, where the trained engine scores "
                      f"{subset:.2%}; largest logit difference {gap:.1e}")
        self.finish_loggers()
        self._say_where()

    def after_predict(self) -> None:
        self.finish_loggers()
        writer = next((c for c in self.trainer.callbacks if hasattr(c, "write_on_epoch_end")), None)
        if writer is not None and writer.path is not None:
            print(f"predictions written to {writer.path}")

    def _say_where(self) -> None:
        if self.trainer.fast_dev_run:
            print("fast_dev_run: nothing was saved (no run directory, no checkpoint)")
        else:
            print(f"run written to {self.trainer.log_dir}")

    def finish_loggers(self) -> None:
        """Close the W&B run so its files are complete (and one process can start the next run)."""
        if any(type(logger).__name__ == "WandbLogger" for logger in self.trainer.loggers):
            import wandb

            wandb.finish()

    after_validate = after_test = finish_loggers


def _refuse_renamed_options(args: list[str]) -> None:
    """``optimizer: adam`` (in a config file or on the command line) names its replacement instead of a parse error."""
    import yaml

    values: dict[str, Any] = {}
    for flag, value in zip(args, args[1:]):
        if flag == "--config" and Path(value).is_file():
            path = Path(value)  # named so: a malformed file is reported with its name (errors.explain)
            document = yaml.safe_load(path.read_text())
            model = (document.get("model") if isinstance(document, dict) else None) or {}  # else the parser says
            values.update({f"model.{k}": v for k, v in model.items() if isinstance(model, dict)})
        elif flag.startswith("--model."):
            values[flag.removeprefix("--")] = value
    for key, (old, new) in RENAMED_OPTIONS.items():
        if isinstance(values.get(key), str) and values[key] in old.split():
            raise UserError(f"{key}: {values[key]!r} is the syntax of an earlier release; give {new}.")


def _plain(value: Any) -> Any:
    """Config values compare as plain data (tuples and lists alike)."""
    return list(value) if isinstance(value, (list, tuple)) else value


class _DropNoise(logging.Filter):
    """Lines Lightning prints on every run that a user cannot act on: advertisements ("Tip: try installing ...")
    and the absence of accelerators this machine does not have."""

    NOISE = (
        "GPU available: False", "TPU available: False", "HPU available: False",
        # the certification callback is re-attached for the test after fit; nothing to act on
        "The following callbacks returned in `LightningModule.configure_callbacks` will override",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOISE) and "Tip: For seamless" not in str(record.msg)


def quiet_libraries() -> None:
    """Silence messages a user cannot act on; called when the CLI starts, never at import time."""
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropNoise())
    # A resumed run continues in its own directory on purpose.
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # The dispatcher hands LightningCLI the arguments explicitly; that is intended.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")


def make_cli(args: list[str] | None = None, *, run: bool = True, callbacks: list[Callback] | None = None) -> SQDRCLI:
    """Build (and by default run) the LightningCLI; ``run=False`` with ``callbacks`` is how sweeps drive trials."""
    quiet_libraries()
    return SQDRCLI(
        SQDRModule,
        ImageDataModule,
        subclass_mode_data=True,
        args=args,
        run=run,
        parser_kwargs={"allow_abbrev": False},
        parser_class=SQDRParser,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"enable_progress_bar": sys.stdout.isatty(), "callbacks": list(callbacks or [])},
        auto_configure_optimizers=False,
    )


def main(argv: list[str] | None = None) -> None:
    """``sqdr fit|validate|test|predict ...`` (``argv`` includes the sub-command)."""
    make_cli(list(sys.argv[1:] if argv is None else argv))
