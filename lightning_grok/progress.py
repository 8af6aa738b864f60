"""A progress bar that counts GD steps rather than epochs."""

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar


class GDProgressBar(TQDMProgressBar):
    """One bar over the whole run, labelled by GD step, with the logged loss and accuracies.

    The data module serves one epoch of ``max_steps`` batches, so Lightning's
    per-epoch bar already spans the run. This subclass only relabels it and
    drops the logger version from the displayed values.
    """

    def on_train_epoch_start(self, trainer: "pl.Trainer", *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description("GD steps")

    def get_metrics(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
