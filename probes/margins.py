"""A callback that logs the margins of the network on flipped and unflipped training points.

Benign overfitting means the network fits every flipped label, so the flipped
points end with positive margins against their flipped labels, while the
network still classifies fresh points by their clean labels.
"""

from lightning.pytorch import LightningModule, Trainer

from probes import functional as F
from probes._base import NetworkProbe, tensorboard_writer
from probes.schedule import ScheduleMode
from probes.snapshot import ProbeAccess


class FlippedMargins(NetworkProbe):
    """Log the normalized margins ``y_i f(x_i) / ||W||_F`` on the training points.

    The labels ``y_i`` are those trained on, flipped ones included.

    Scalars: ``margins/flipped_min``, ``margins/flipped_mean``,
    ``margins/unflipped_min``, ``margins/unflipped_mean``. An ensemble seed
    without flipped points gives NaN for the flipped scalars, and the ensemble
    statistics leave that seed out.

    With a TensorBoardLogger, also histograms ``margins/flipped`` and
    ``margins/unflipped`` of the margins of all ensemble seeds.

    Args:
        access: where the network and the data are found; ``None`` uses the
            :class:`~probes.snapshot.ProbeAccess` defaults.
        schedule: ``"every"`` or ``"log"``, see :class:`~probes.schedule.StepSchedule`.
        every: the period in steps in ``"every"`` mode.
        per_decade: points per factor of ten in steps in ``"log"`` mode.
        extra_steps: steps measured in addition to the schedule.
        histograms: whether to write the histograms.

    Raises:
        ValueError: if a schedule argument is invalid.
    """

    def __init__(
        self,
        access: ProbeAccess | None = None,
        schedule: ScheduleMode = "every",
        every: int = 1,
        per_decade: int = 10,
        extra_steps: list[int] | None = None,
        histograms: bool = True,
    ) -> None:
        super().__init__(access, schedule=schedule, every=every, per_decade=per_decade, extra_steps=extra_steps)
        self.histograms = histograms

    def needs_tensorboard(self) -> bool:
        return self.histograms

    def measure(self, trainer: Trainer, pl_module: LightningModule, step: int, final: bool) -> None:
        snapshot = self.access.network_snapshot(trainer, pl_module)
        data = self.access.cluster_data(trainer, pl_module)

        outputs = F.network_outputs(snapshot.train_preactivations, snapshot.output_weights)  # (S, n)
        margins = F.normalized_margins(outputs, data.train_labels, snapshot.frobenius_norm)
        groups = {"flipped": data.flip_mask, "unflipped": ~data.flip_mask}

        for name, mask in groups.items():
            self.log_values(pl_module, f"margins/{name}_min", F.masked_min(margins, mask), step, final)
            self.log_values(pl_module, f"margins/{name}_mean", F.masked_mean(margins, mask), step, final)

        writer = tensorboard_writer(trainer)
        if writer is None or not trainer.is_global_zero or not self.histograms:
            return
        for name, mask in groups.items():
            values = margins[mask]
            values = values[values.isfinite()].double().cpu().numpy()
            if values.size:
                writer.add_histogram(f"margins/{name}", values, global_step=step, bins="auto")
