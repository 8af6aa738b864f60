"""The probe callbacks, and a TensorBoard custom-scalars layout that groups their scalars.

Each probe is a Lightning callback that a trainer takes with one line::

    trainer = Trainer(callbacks=[NeuronAlignment(), LinearComponent(), FlippedMargins(), Milestones()])
"""

import re

from lightning.pytorch import Callback, LightningModule, Trainer
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.plugins.custom_scalar import layout_pb2

from probes._base import tensorboard_writer, warn_once_without_tensorboard
from probes.alignment import NeuronAlignment
from probes.linear import LinearComponent
from probes.margins import FlippedMargins
from probes.milestones import Milestones
from probes.snapshot import ProbeAccess

__all__ = ["CustomScalarsLayout", "FlippedMargins", "LinearComponent", "Milestones", "NeuronAlignment"]

LAYOUT_TAG = "custom_scalars__config__"
"""The tag under which the TensorBoard custom-scalars plugin looks for its layout."""


class CustomScalarsLayout(Callback):
    """Write a TensorBoard custom-scalars layout that puts related scalars on one chart.

    Charts, in the category ``probes``: training and test accuracy
    (``accuracy_tags``), alignment of both neuron groups with ``mu_1``, the same
    with ``mu_2``, and the minimum and mean margins of flipped and unflipped
    points. For an ensemble of ``S > 1`` seeds, each series is a margin-chart
    series: the median with a band from the ``_q20`` to the ``_q80`` tag. For
    one seed, the charts are plain multi-line charts.

    Args:
        accuracy_tags: the training and test accuracy tags to draw together.
        ensemble_size: the number of seeds ``S``; ``None`` reads it from the
            training labels through ``access`` when fitting starts.
        access: where the training labels are found when ``ensemble_size`` is ``None``.

    Raises:
        ValueError: if ``ensemble_size`` is below 1.
    """

    def __init__(
        self,
        accuracy_tags: tuple[str, ...] = ("train/acc", "test/acc"),
        ensemble_size: int | None = None,
        access: ProbeAccess | None = None,
    ) -> None:
        if ensemble_size is not None and (isinstance(ensemble_size, bool) or not isinstance(ensemble_size, int) or ensemble_size < 1):
            raise ValueError(f"ensemble_size must be None or an integer >= 1, got {ensemble_size!r}")
        self.accuracy_tags = tuple(accuracy_tags)
        self.ensemble_size = ensemble_size
        self.access = access if access is not None else ProbeAccess()

    def charts(self) -> dict[str, list[str]]:
        """Return the series tags of each chart, by chart title."""
        return {
            "train and test accuracy": list(self.accuracy_tags),
            "alignment with mu_1": ["alignment/pos_mu1", "alignment/neg_mu1"],
            "alignment with mu_2": ["alignment/pos_mu2", "alignment/neg_mu2"],
            "flipped and unflipped margins": [
                "margins/flipped_min",
                "margins/flipped_mean",
                "margins/unflipped_min",
                "margins/unflipped_mean",
            ],
        }

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None:
            warn_once_without_tensorboard(trainer, "the custom-scalars layout")
            return
        if not trainer.is_global_zero:
            return
        ensemble_size = self.ensemble_size
        if ensemble_size is None:
            ensemble_size = self.access.cluster_data(trainer, pl_module).train_labels.shape[0]
        # NOTE: _get_file_writer is private in torch.utils.tensorboard (torch 2.13); the public
        # add_custom_scalars draws at most one series per margin chart.
        writer._get_file_writer().add_summary(layout_summary(self.charts(), bands=ensemble_size > 1))


def layout_summary(charts: dict[str, list[str]], bands: bool, category: str = "probes") -> Summary:
    """Build the custom-scalars layout summary for ``charts``, one chart per title.

    With ``bands``, each series ``tag`` becomes a margin series from ``<tag>_q20``
    to ``<tag>_q80`` around ``tag``. Without, a chart is a multi-line chart whose
    tag patterns match each tag exactly.
    """
    chart_protos = []
    for title, tags in charts.items():
        if bands:
            series = [layout_pb2.MarginChartContent.Series(value=tag, lower=f"{tag}_q20", upper=f"{tag}_q80") for tag in tags]
            chart_protos.append(layout_pb2.Chart(title=title, margin=layout_pb2.MarginChartContent(series=series)))
        else:
            patterns = [f"^{re.escape(tag)}$" for tag in tags]
            chart_protos.append(layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=patterns)))
    layout = layout_pb2.Layout(category=[layout_pb2.Category(title=category, chart=chart_protos)])

    tensor = TensorProto(dtype="DT_STRING", string_val=[layout.SerializeToString()], tensor_shape=TensorShapeProto())
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="custom_scalars"))
    return Summary(value=[Summary.Value(tag=LAYOUT_TAG, tensor=tensor, metadata=metadata)])
