"""The scheduling shell shared by the network probes, and access to the TensorBoard writer.

Step semantics. The value logged at step ``t`` describes the weights after
``t`` optimizer steps. A probe measures ``W(t)`` in ``on_train_batch_start``
with ``t = trainer.global_step``, before the batch steps the optimizer. The
weights after the last step have no following batch, so the probe measures
them in ``on_train_epoch_end`` once ``global_step`` reaches the last step.
:func:`probes.stats.log_ensemble` writes each value to the loggers at step
``t`` itself, since Lightning's own logger step would file the final value
under ``T - 1``.
"""

import weakref
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn

from probes.schedule import ScheduleMode, StepSchedule
from probes.snapshot import ProbeAccess
from probes.stats import log_ensemble

_WARNINGS_GIVEN: "weakref.WeakKeyDictionary[Trainer, set[str]]" = weakref.WeakKeyDictionary()


def last_training_step(trainer: Trainer) -> int | float:
    """Return the step count ``T`` at which training ends: ``max_steps`` if set, else the estimate."""
    if trainer.max_steps > 0:
        return trainer.max_steps
    return trainer.estimated_stepping_batches


def tensorboard_writer(trainer: Trainer) -> Any | None:
    """Return the ``SummaryWriter`` of the first ``TensorBoardLogger`` of ``trainer``, or ``None``."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def warn_once(trainer: Trainer, reason: str, message: str) -> None:
    """Warn with ``message`` unless some probe already warned about ``reason`` for this trainer."""
    reasons_warned = _WARNINGS_GIVEN.setdefault(trainer, set())
    if reason not in reasons_warned:
        reasons_warned.add(reason)
        rank_zero_warn(message)


def warn_once_without_tensorboard(trainer: Trainer, skipped_output: str) -> None:
    """Warn, once per trainer across all probes, that TensorBoard-only output is skipped."""
    logger_names = [type(logger).__name__ for logger in trainer.loggers] or ["no logger"]
    warn_once(
        trainer,
        "no TensorBoardLogger",
        f"Probe output ({skipped_output}) needs a TensorBoardLogger, but the trainer has {', '.join(logger_names)}. "
        "Histograms, figures and the custom-scalars layout are skipped; scalars are logged as usual. "
        "Add lightning.pytorch.loggers.TensorBoardLogger to the trainer's loggers to get them.",
    )


class NetworkProbe(Callback):
    """Measure a network at the steps a :class:`~probes.schedule.StepSchedule` selects, and log it.

    Subclasses implement :meth:`measure`, which reads the network through
    :attr:`access` and logs through :meth:`log_values`.

    Args:
        access: where the network and the data are found; ``None`` uses the
            :class:`~probes.snapshot.ProbeAccess` defaults.
        schedule: ``"every"`` or ``"log"``, see :class:`~probes.schedule.StepSchedule`.
        every: the period in steps in ``"every"`` mode.
        per_decade: points per factor of ten in steps in ``"log"`` mode.
        extra_steps: steps measured in addition to the schedule.

    Raises:
        ValueError: if ``schedule``, ``every`` or ``per_decade`` is invalid.
    """

    def __init__(
        self,
        access: ProbeAccess | None = None,
        schedule: ScheduleMode = "every",
        every: int = 1,
        per_decade: int = 10,
        extra_steps: list[int] | None = None,
    ) -> None:
        if access is not None and not isinstance(access, ProbeAccess):
            raise TypeError(f"access must be a ProbeAccess or None, got {type(access).__name__}")
        self.access = access if access is not None else ProbeAccess()
        self.schedule = StepSchedule(schedule, every=every, per_decade=per_decade, extra_steps=extra_steps or ())
        self._last_measured_step: int | None = None

    def measure(self, trainer: Trainer, pl_module: LightningModule, step: int, final: bool) -> None:
        """Measure ``W(step)`` and log it; ``final`` is true at the end of training."""
        raise NotImplementedError

    def is_due(self, step: int, last_step: int | float) -> bool:
        """Return whether ``step`` is measured; subclasses may add steps to the schedule."""
        return self.schedule.selects(step, last_step)

    def needs_tensorboard(self) -> bool:
        """Return whether this probe writes histograms or figures."""
        return False

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.access.check(trainer, pl_module)
        if self.needs_tensorboard() and tensorboard_writer(trainer) is None:
            warn_once_without_tensorboard(trainer, f"{type(self).__name__} histograms and figures")

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_measured_step or not self.is_due(step, last_training_step(trainer)):
            return
        with torch.no_grad():
            self.measure(trainer, pl_module, step, final=False)
        self._last_measured_step = step

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        step = trainer.global_step
        if step < last_training_step(trainer) or step == self._last_measured_step:
            return
        with torch.no_grad():
            self.measure(trainer, pl_module, step, final=True)
        self._last_measured_step = step

    def log_values(self, pl_module: LightningModule, tag: str, values: torch.Tensor, step: int, final: bool) -> None:
        """Log per-seed ``values`` of shape ``(S,)`` of ``W(step)`` as the median and quantiles over seeds."""
        # on_epoch for the final values: LightningModule.log allows only that in on_train_epoch_end.
        log_ensemble(pl_module, tag, values, step=step, on_step=not final, on_epoch=final)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(access=repr(self.access), schedule=repr(self.schedule))

    def state_dict(self) -> dict[str, Any]:
        return {"last_measured_step": self._last_measured_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_measured_step = state_dict.get("last_measured_step")

