"""The ``python -m lightning_grok`` command line, built on LightningCLI."""

import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml

from jsonargparse import ArgumentParser
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from lightning_grok.assumptions import assumptions_markdown
from lightning_grok.data import DataMismatchError, XORClusterDataModule, check_data_settings
from lightning_grok.model import DivergenceError, XORNetwork, check_model_settings, check_process_count
from lightning_grok.progress import GDProgressBar
from probes.snapshot import ProbeAccessError

# During fit the module measures the test split on its own step schedule, so the
# data module gives the validation loop no batches, which Lightning warns about.
warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")
# Lightning recommends sync_dist=True for values logged at epoch end on several
# processes. The logged values are already equal on every process: the module sums
# its loss and accuracy counts over processes, and the probes measure the full data.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\(.*sync_dist=True")

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "xor", "default_hp_metric": False},
    },
    "log_every_n_steps": 1,
    "num_sanity_val_steps": 0,
    "enable_model_summary": False,
}

# Values of ckpt_path that Lightning resolves itself rather than reading a file.
_CHECKPOINT_KEYWORDS = {"best", "last", "hpc", "registry"}

# argparse accepts any unique prefix of an option, so a typo such as
# --data.flip_rat would silently set data.flip_rate; every parser rejects it instead.
_PARSER_KWARGS = {
    "allow_abbrev": False,
    "prog": "lightning_grok",  # in messages, in place of "__main__.py"
    **{subcommand: {"allow_abbrev": False} for subcommand in ("fit", "validate", "test", "predict")},
}


class GrokCLI(LightningCLI):
    """LightningCLI with the data settings linked into the model and settings checked before training."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Values that follow from the data are linked, not repeated in the YAML.
        parser.link_arguments("data.input_dim", "model.init_args.input_dim")
        parser.link_arguments("data.num_seeds", "model.init_args.num_seeds")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # jsonargparse reports a YAML syntax error without naming the file; name it.
        for path in _config_files(sys.argv[1:] if args is None else args):
            try:
                yaml.safe_load(Path(path).read_text())
            except yaml.YAMLError as error:
                _exit_with_usage_error(parser, f"config file {path!r} is not valid YAML: {error}")
            except OSError:
                pass  # jsonargparse reports a missing or unreadable file itself
        super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:
        # jsonargparse would wrap an error raised by the model's constructor in a
        # report on union types, so the model settings are checked here first.
        config = self.config[self.subcommand] if self.subcommand else self.config
        try:
            # The data first: the model repeats the linked data.input_dim and
            # data.num_seeds, which the message should name as the user typed them.
            check_data_settings(**dict(config.data))
            check_model_settings(**dict(config.model.init_args))
        except ValueError as error:
            _exit_with_usage_error(self.parser, str(error))

    def instantiate_classes(self) -> None:
        # Settings are checked in the constructors; report a rejected value as a
        # usage error, with no traceback, before anything is trained or written.
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, MisconfigurationException) as error:
            _exit_with_usage_error(self.parser, _original_message(error))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # Add the GD-step progress bar unless the user chose a bar or turned bars off.
        config = self.config_init[self.subcommand]["trainer"] if self.subcommand else self.config_init["trainer"]
        callbacks = list(kwargs.get("callbacks") or config.get("callbacks") or [])
        has_bar = any(isinstance(callback, ProgressBar) for callback in callbacks)
        if config.get("enable_progress_bar") is not False and not has_bar:
            kwargs["callbacks"] = [*callbacks, GDProgressBar()]
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        max_steps = self.trainer.max_steps
        if max_steps < 1:
            _exit_with_usage_error(
                self.parser, f"trainer.max_steps must be an integer >= 1 (the number of GD steps), got {max_steps}"
            )
        self._check_process_count()
        self._check_checkpoint_fits_model()
        self._report_assumptions()

    def before_validate(self) -> None:
        self._check_process_count()
        self._check_checkpoint_fits_model()

    def before_test(self) -> None:
        self._check_process_count()
        self._check_checkpoint_fits_model()

    def before_predict(self) -> None:
        self._check_process_count()
        self._check_checkpoint_fits_model()

    def _check_process_count(self) -> None:
        # The module checks this in setup too, but by then the DDP strategy has
        # started the other processes, and each of them would end with a traceback.
        try:
            check_process_count(self.model, self.trainer.world_size)
        except ValueError as error:
            _exit_with_usage_error(self.parser, str(error))

    def _parse_ckpt_path(self) -> None:
        # NOTE: overrides a private LightningCLI method (lightning 2.6), the first
        # place that reads --ckpt_path. A missing or unreadable file is reported
        # here, before the parent method loads it and before a run directory exists.
        self._checkpoint_shapes: dict[str, tuple[int, ...]] | None = None
        path = self._checkpoint_file()
        if path is not None:
            self._checkpoint_shapes = _read_checkpoint_shapes(self.parser, path)
        super()._parse_ckpt_path()

    def _checkpoint_file(self) -> Path | None:
        """Return ``--ckpt_path`` as a local file, or ``None`` if unset, a keyword such as "last" or a URL."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path is None:
            return None
        text = str(ckpt_path)
        if text in _CHECKPOINT_KEYWORDS or text.startswith("registry:") or "://" in text:
            return None
        return Path(text)

    def _check_checkpoint_fits_model(self) -> None:
        # Lightning would load the checkpoint only after writing the run directory,
        # and end with a traceback on a shape mismatch; compare the shapes first.
        if not getattr(self, "_checkpoint_shapes", None):
            return
        strict = getattr(self.model, "strict_loading", True)
        problems = _state_dict_mismatches(self.model.state_dict(), self._checkpoint_shapes, strict=strict)
        if problems:
            _exit_with_usage_error(
                self.parser,
                f"checkpoint {str(self._checkpoint_file())!r} does not fit the model these settings build: "
                f"{'; '.join(problems)}. Use the data and model settings of the run that saved it; "
                "that run's config.yaml is in its run directory, above checkpoints/",
            )

    def _report_assumptions(self) -> None:
        # Print which assumptions (A1)-(A6) of the grokking theorem of Xu et al.
        # (ICLR 2024) these settings meet, see lightning_grok.assumptions, and
        # keep the table with the run as a TensorBoard text event.
        table = assumptions_markdown(self.datamodule, self.model)
        if table is None:
            return
        rank_zero_info(f"Assumptions of the benign overfitting and grokking theorem:\n{table}")
        if self.trainer.is_global_zero:
            for logger in self.trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_text("assumptions", table, global_step=0)


def _config_files(args: Any) -> list[str]:
    """List the files that ``--config`` or ``-c`` name in a command line; none for a dict of settings."""
    if not isinstance(args, (list, tuple)):
        return []
    files = []
    for position, arg in enumerate(args):
        arg = str(arg)
        if arg in ("--config", "-c") and position + 1 < len(args):
            files.append(str(args[position + 1]))
        elif arg.startswith("--config="):
            files.append(arg.removeprefix("--config="))
    return files


def _original_message(error: Exception) -> str:
    """Return the message of the error at the end of the chain of ``error``, if it is a settings error.

    jsonargparse wraps an error raised by a class under ``trainer.callbacks`` in a
    report on every union subtype it tried; the original error names the problem.
    """
    original = error
    while (original.__cause__ or original.__context__) is not None:
        original = original.__cause__ or original.__context__
    if original is not error and isinstance(original, (ValueError, TypeError, MisconfigurationException)):
        return str(original)
    return str(error)


def _read_checkpoint_shapes(parser: ArgumentParser, path: Path) -> dict[str, tuple[int, ...]]:
    """Return the shape of each tensor in the ``state_dict`` of checkpoint ``path``, or exit with a usage error."""
    if not path.is_file():
        _exit_with_usage_error(
            parser,
            f"ckpt_path {str(path)!r}: checkpoint file not found; pass a .ckpt file that a fit run saved, "
            "such as <save_dir>/<name>/version_0/checkpoints/<file>.ckpt",
        )
    if not zipfile.is_zipfile(path):
        _exit_with_usage_error(
            parser,
            f"ckpt_path {str(path)!r} is not a checkpoint: torch.save writes a zip archive and this file is not one; "
            "pass a .ckpt file that a fit run saved",
        )
    try:
        # mmap maps the file, so only the headers of the tensors are read here.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        state_dict = checkpoint["state_dict"]
    # A zip archive that torch.save did not write, or wrote without a state_dict,
    # fails with one of several unrelated types (RuntimeError, UnpicklingError, KeyError).
    except Exception as error:
        _exit_with_usage_error(
            parser,
            f"ckpt_path {str(path)!r} is not a readable Lightning checkpoint ({type(error).__name__}: {error}); "
            "pass a .ckpt file that a fit run saved",
        )
    return {name: tuple(tensor.shape) for name, tensor in state_dict.items()}


def _state_dict_mismatches(
    model_state: dict[str, torch.Tensor], checkpoint_shapes: dict[str, tuple[int, ...]], strict: bool
) -> list[str]:
    """List the tensors that ``load_state_dict`` would reject, one phrase each."""
    problems = []
    for name, tensor in model_state.items():
        if name not in checkpoint_shapes:
            if strict:
                problems.append(f"{name} is missing from the checkpoint")
        elif tuple(tensor.shape) != checkpoint_shapes[name]:
            problems.append(
                f"{name} has shape {checkpoint_shapes[name]} in the checkpoint "
                f"but {tuple(tensor.shape)} with these settings"
            )
    if strict:
        for name in sorted(checkpoint_shapes.keys() - model_state.keys()):
            problems.append(f"{name} is in the checkpoint but not in the model")
    return problems


def _exit_with_usage_error(parser: ArgumentParser, message: str) -> None:
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(args: list[str] | None = None) -> GrokCLI:
    """Run the command line on ``args`` (``sys.argv[1:]`` if ``None``) and return the CLI.

    A diverged run exits with status 1. A resume on other data and a probe access
    path that does not exist exit with status 2. Each prints a one-paragraph
    message and no traceback.
    """
    try:
        return GrokCLI(
            XORNetwork,
            XORClusterDataModule,
            subclass_mode_model=True,
            trainer_defaults=TRAINER_DEFAULTS,
            args=args,
            save_config_kwargs={"overwrite": True},
            parser_kwargs=_PARSER_KWARGS,
        )
    except DivergenceError as error:
        print(f"lightning_grok: error: {error}", file=sys.stderr)
        sys.exit(1)
    except DataMismatchError as error:
        print(f"lightning_grok: error: {error}", file=sys.stderr)
        sys.exit(2)
    except ProbeAccessError as error:
        # Raised when fit starts, once the data exist, so the run directory is already written.
        print(f"lightning_grok: error: {error}; fix the access paths of the probe callbacks under trainer.callbacks",
              file=sys.stderr)
        sys.exit(2)
