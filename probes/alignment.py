"""A callback that logs how the hidden neurons align with the cluster means.

In the grokking phase of training on XOR cluster data, neurons with output
weight ``a_j > 0`` turn towards ``+-mu_1`` and neurons with ``a_j < 0`` towards
``+-mu_2``, the means whose clean labels match the sign of ``a_j``.
"""

from typing import Any

import torch
from einops import rearrange
from lightning.pytorch import LightningModule, Trainer

from probes import functional as F
from probes._base import NetworkProbe, last_training_step, tensorboard_writer
from probes.schedule import ScheduleMode
from probes.snapshot import ClusterData, NetworkSnapshot, ProbeAccess

PLANE_GRID_SIZE = 101
"""Grid points per axis at which the figure evaluates the sign of the network."""


class NeuronAlignment(NetworkProbe):
    """Log the alignment of hidden weight vectors with the cluster means ``mu_1`` and ``mu_2``.

    Scalars, one per output-weight sign and mean, each the mean over neurons of
    ``|cos(w_j, mu_k)|``: ``alignment/pos_mu1``, ``alignment/pos_mu2`` (neurons
    with ``a_j > 0``) and ``alignment/neg_mu1``, ``alignment/neg_mu2`` (``a_j < 0``).

    With a TensorBoardLogger, also histograms ``alignment/pos_dot_mu1`` and
    ``alignment/pos_dot_mu2`` of ``<w_j, mu_k>`` over the neurons with
    ``a_j > 0`` of all ensemble seeds, and at each of ``figure_steps`` a figure
    ``alignment/plane`` of ensemble seed 0 projected onto ``span(mu_1, mu_2)``.

    Args:
        access: where the network and the data are found; ``None`` uses the
            :class:`~probes.snapshot.ProbeAccess` defaults.
        schedule: ``"every"`` or ``"log"``, see :class:`~probes.schedule.StepSchedule`.
        every: the period in steps in ``"every"`` mode.
        per_decade: points per factor of ten in steps in ``"log"`` mode.
        extra_steps: steps measured in addition to the schedule.
        histograms: whether to write the histograms at the scheduled steps.
        figure_steps: steps at which to draw the plane figure, scheduled or not.

    Raises:
        ValueError: if a schedule argument is invalid or a figure step is negative.

    Example::

        >>> NeuronAlignment(schedule="log", per_decade=10, figure_steps=[0, 1, 1000])
        NeuronAlignment(schedule=StepSchedule(mode='log', every=1, per_decade=10), figure_steps=[0, 1, 1000])
    """

    def __init__(
        self,
        access: ProbeAccess | None = None,
        schedule: ScheduleMode = "every",
        every: int = 1,
        per_decade: int = 10,
        extra_steps: list[int] | None = None,
        histograms: bool = True,
        figure_steps: list[int] | None = None,
    ) -> None:
        super().__init__(access, schedule=schedule, every=every, per_decade=per_decade, extra_steps=extra_steps)
        figure_steps = list(figure_steps or [])
        for step in figure_steps:
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise ValueError(f"figure_steps must contain integers >= 0, got {step!r} in {figure_steps}")
        self.histograms = histograms
        self.figure_steps = sorted(set(figure_steps))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(schedule={self.schedule!r}, figure_steps={self.figure_steps})"

    def needs_tensorboard(self) -> bool:
        return self.histograms or bool(self.figure_steps)

    def is_due(self, step: int, last_step: int | float) -> bool:
        return super().is_due(step, last_step) or step in self.figure_steps

    def measure(self, trainer: Trainer, pl_module: LightningModule, step: int, final: bool) -> None:
        snapshot = self.access.network_snapshot(trainer, pl_module)
        data = self.access.cluster_data(trainer, pl_module)
        scheduled = final or self.schedule.selects(step, last_training_step(trainer))

        if scheduled:
            cosines = F.mean_cosines(snapshot.mean_projections, snapshot.neuron_norms, data.mean_norms)
            alignment = F.alignment_by_sign(cosines, snapshot.output_weights)  # (S, sign, mean)
            for sign_index, sign_name in enumerate(("pos", "neg")):
                for mean_index in range(2):
                    tag = f"alignment/{sign_name}_mu{mean_index + 1}"
                    self.log_values(pl_module, tag, alignment[:, sign_index, mean_index], step, final)

        writer = tensorboard_writer(trainer)
        if writer is None or not trainer.is_global_zero:
            return
        positive = snapshot.mean_projections[snapshot.output_weights > 0]  # (neurons over seeds, 2)
        if scheduled and self.histograms and positive.numel() > 0:
            for mean_index in range(2):
                values = positive[:, mean_index]
                # A diverging run has infinite weights; the module reports it, the histogram skips them.
                values = values[values.isfinite()].double().cpu().numpy()
                if values.size:
                    writer.add_histogram(f"alignment/pos_dot_mu{mean_index + 1}", values, global_step=step, bins="auto")
        if step in self.figure_steps:
            writer.add_figure("alignment/plane", plane_figure(snapshot, data, step), global_step=step)


def plane_figure(snapshot: NetworkSnapshot, data: ClusterData, step: int) -> Any:
    """Draw ensemble seed 0 projected onto ``span(mu_1, mu_2)`` as a matplotlib figure.

    The left panel shows the neurons ``(<w_j, e_1>, <w_j, e_2>)``, divided by the
    largest in-plane length so the axes read the same at any weight scale. The right
    panel shows the training points ``(<x_i, e_1>, <x_i, e_2>)`` over the sign of
    the network restricted to the plane, with flipped points marked.
    """
    from matplotlib.figure import Figure  # imported here: matplotlib is needed only for figures

    neurons = F.plane_coordinates(snapshot.mean_projections[:1], data.mean_norms[:1].to(snapshot.mean_projections))
    points = F.plane_coordinates(data.train_mean_projections[:1], data.mean_norms[:1])[0].double().cpu()
    output_weights = snapshot.output_weights[:1]
    # At p >> n most of ||w_j|| lies outside the plane, so the neurons are scaled by
    # their largest in-plane length to fill the panel.
    largest_norm = torch.linalg.vector_norm(neurons[0], dim=-1).amax()
    neurons = neurons / torch.where(largest_norm > 0, largest_norm, torch.ones_like(largest_norm))

    limit = 1.1 * float(points.abs().amax()) if points.numel() else 1.0
    axis = torch.linspace(-limit, limit, PLANE_GRID_SIZE, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)  # (g, 2), c_2 varying fastest
    outputs = F.plane_network_outputs(neurons.double().cpu(), output_weights.double().cpu(), grid)
    sign_image = rearrange(torch.sign(outputs[0]), "(c1 c2) -> c2 c1", c1=PLANE_GRID_SIZE)

    # Fixed margins: a constrained layout took more time than the drawing itself.
    figure = Figure(figsize=(10, 4.8))
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.11, top=0.93, wspace=0.25)
    neuron_axes, data_axes = figure.subplots(1, 2)

    neuron_xy = neurons[0].double().cpu()
    positive = (output_weights[0] > 0).cpu()
    neuron_axes.scatter(*neuron_xy[positive].T, s=12, c="tab:red", label="$a_j > 0$")
    neuron_axes.scatter(*neuron_xy[~positive].T, s=12, c="tab:blue", label="$a_j < 0$")
    neuron_axes.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), aspect="equal", title=f"neurons, step {step}")
    neuron_axes.set(xlabel=r"$\langle w_j, e_1\rangle$ (scaled)", ylabel=r"$\langle w_j, e_2\rangle$ (scaled)")
    neuron_axes.legend(loc="upper right", fontsize="small")

    extent = (-limit, limit, -limit, limit)
    data_axes.imshow(sign_image.numpy(), origin="lower", extent=extent, cmap="coolwarm", vmin=-3, vmax=3, alpha=0.6)
    labels = data.train_labels[0].cpu()
    flipped = data.flip_mask[0].cpu()
    for label, color in ((1, "tab:red"), (-1, "tab:blue")):
        clean = (labels == label) & ~flipped
        noisy = (labels == label) & flipped
        data_axes.scatter(*points[clean].T, s=10, c=color, label=f"$y = {label:+d}$")
        data_axes.scatter(*points[noisy].T, s=40, c=color, marker="x", label=f"$y = {label:+d}$, flipped")
    data_axes.set(aspect="equal", title="training points over sign f", xlabel=r"$\langle x, e_1\rangle$", ylabel=r"$\langle x, e_2\rangle$")
    data_axes.legend(loc="upper right", fontsize="small")
    return figure

