"""A callback that records when a run memorizes its training set and when its test metric rises.

Grokking is a delay between these two events: the training accuracy reaches 1
long before the test accuracy rises. The callback reads both metrics from
``trainer.callback_metrics``, so it serves any task whose module logs them.
"""

import math
from collections.abc import Sequence
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn


class Milestones(Callback):
    """Record the first step of memorization and the first steps at which a test metric reaches thresholds.

    A milestone step ``t`` means the metric value describing the weights after
    ``t`` optimizer steps reached the level. The callback takes values logged
    during the training batch that starts at ``global_step = t`` (in
    ``on_train_batch_start`` or ``training_step``) to describe ``W(t)``. It
    takes values logged during validation and at the end of training, read at
    ``global_step = t``, to describe ``W(t)`` as well.

    Logged tags, each written once when it becomes known, at its step:

    - ``milestones/memorized_step``: the first step with ``train_metric >= memorized_level``.
    - ``milestones/<test>_<threshold>_step``: the first step with
      ``test_metric >= threshold``, where ``<test>`` is ``test_metric`` with ``/``
      replaced by ``_``, e.g. ``milestones/test_acc_0.9_step``.
    - ``milestones/<test>_<threshold>_delay``: that step minus the memorized step;
      negative when the test metric reached the threshold first.

    They are written to every logger directly, because the last step is read in
    ``on_train_end``, where ``LightningModule.log`` is not allowed. The steps
    found so far are part of the callback's state and survive a resume.

    Args:
        train_metric: the training metric whose first reaching of ``memorized_level`` marks memorization.
        test_metric: the test metric compared with ``thresholds``.
        thresholds: the levels of ``test_metric`` whose first steps are recorded.
        memorized_level: the level of ``train_metric`` that counts as memorization.

    Raises:
        ValueError: if a metric name is empty, or a threshold or level is not a finite number.

    Example::

        >>> Milestones(test_metric="val/acc", thresholds=[0.5, 0.95])
        Milestones(train_metric='train/acc', test_metric='val/acc', thresholds=[0.5, 0.95], memorized_level=1.0)
    """

    def __init__(
        self,
        train_metric: str = "train/acc",
        test_metric: str = "test/acc",
        thresholds: Sequence[float] = (0.6, 0.9, 0.99),
        memorized_level: float = 1.0,
    ) -> None:
        for name, value in (("train_metric", train_metric), ("test_metric", test_metric)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty metric name such as 'train/acc', got {value!r}")
        thresholds = list(thresholds)
        if not thresholds:
            raise ValueError("thresholds must contain at least one level, got an empty sequence")
        for name, value in [("memorized_level", memorized_level), *(("thresholds", level) for level in thresholds)]:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must contain finite numbers, got {value!r}")

        self.train_metric = train_metric
        self.test_metric = test_metric
        self.thresholds = sorted({float(level) for level in thresholds})
        self.memorized_level = float(memorized_level)
        self.memorized_step: int | None = None
        self.threshold_steps: dict[float, int | None] = {level: None for level in self.thresholds}
        self._batch_step = 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(train_metric={self.train_metric!r}, test_metric={self.test_metric!r}, "
            f"thresholds={self.thresholds}, memorized_level={self.memorized_level})"
        )

    @property
    def milestones(self) -> dict[str, int]:
        """The milestones found so far, by tag."""
        found = {}
        if self.memorized_step is not None:
            found["milestones/memorized_step"] = self.memorized_step
        for level, step in self.threshold_steps.items():
            if step is None:
                continue
            found[self._threshold_tag(level, "step")] = step
            if self.memorized_step is not None:
                found[self._threshold_tag(level, "delay")] = step - self.memorized_step
        return found

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.update(trainer, self._batch_step)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self.update(trainer, trainer.global_step)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.update(trainer, trainer.global_step)

    def update(self, trainer: Trainer, step: int) -> None:
        """Compare the current values of the two metrics with the levels, and log new milestones at ``step``."""
        before = self.milestones
        metrics = trainer.callback_metrics

        train_value = _as_float(metrics.get(self.train_metric))
        if self.memorized_step is None and train_value >= self.memorized_level:
            self.memorized_step = step
        test_value = _as_float(metrics.get(self.test_metric))
        for level, found_step in self.threshold_steps.items():
            if found_step is None and test_value >= level:
                self.threshold_steps[level] = step

        new = {tag: value for tag, value in self.milestones.items() if tag not in before}
        if new and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({tag: float(value) for tag, value in new.items()}, step=step)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            train_metric=self.train_metric, test_metric=self.test_metric, thresholds=self.thresholds
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "memorized_step": self.memorized_step,
            "threshold_steps": {str(level): step for level, step in self.threshold_steps.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.memorized_step = state_dict["memorized_step"]
        saved = {float(level): step for level, step in state_dict["threshold_steps"].items()}
        self.threshold_steps = {level: saved.get(level) for level in self.thresholds}

    def _threshold_tag(self, level: float, quantity: str) -> str:
        return f"milestones/{self.test_metric.replace('/', '_')}_{level:g}_{quantity}"


def _as_float(value: Any) -> float:
    """Convert a logged metric to a float; a missing metric becomes NaN, which reaches no level."""
    if value is None:
        return math.nan
    return float(value)
