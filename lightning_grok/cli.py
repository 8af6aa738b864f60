"""The ``python -m lightning_grok`` command line, built on LightningCLI."""

import sys
import warnings
from typing import Any

from jsonargparse import ArgumentParser
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from lightning_grok.assumptions import assumptions_markdown
from lightning_grok.data import XORClusterDataModule
from lightning_grok.model import XORNetwork, check_model_settings
from lightning_grok.progress import GDProgressBar

# During fit the module measures the test split on its own step schedule, so the
# data module gives the validation loop no batches, which Lightning warns about.
warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "xor"},
    },
    "log_every_n_steps": 1,
    "num_sanity_val_steps": 0,
    "enable_model_summary": False,
}


class GrokCLI(LightningCLI):
    """LightningCLI with the data settings linked into the model and settings checked before training."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Values that follow from the data are linked, not repeated in the YAML.
        parser.link_arguments("data.input_dim", "model.init_args.input_dim")
        parser.link_arguments("data.num_seeds", "model.init_args.num_seeds")

    def before_instantiate_classes(self) -> None:
        # jsonargparse would wrap an error raised by the model's constructor in a
        # report on union types, so the model settings are checked here first.
        config = self.config[self.subcommand] if self.subcommand else self.config
        try:
            check_model_settings(**dict(config.model.init_args))
        except ValueError as error:
            _exit_with_usage_error(self.parser, str(error))

    def instantiate_classes(self) -> None:
        # Settings are checked in the constructors; report a rejected value as a
        # usage error, with no traceback, before anything is trained or written.
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, MisconfigurationException) as error:
            _exit_with_usage_error(self.parser, str(error))

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
        self._report_assumptions()

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


def _exit_with_usage_error(parser: ArgumentParser, message: str) -> None:
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(args: list[str] | None = None) -> GrokCLI:
    """Run the command line on ``args`` (``sys.argv[1:]`` if ``None``) and return the CLI."""
    return GrokCLI(
        XORNetwork,
        XORClusterDataModule,
        subclass_mode_model=True,
        trainer_defaults=TRAINER_DEFAULTS,
        args=args,
        save_config_kwargs={"overwrite": True},
    )
