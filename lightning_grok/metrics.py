"""Per-member accuracy of an ensemble, as a torchmetrics metric."""

import torch
from torch import Tensor
from torchmetrics import Metric


class EnsembleAccuracy(Metric):
    """Accuracy of the hard predictions ``f(x) > 0`` of each of ``S`` ensemble members.

    .. math::
        \\text{acc}_s = \\frac{\\#\\{i \\in \\text{kept}_s : (f_s(x_i) > 0) = (y_{s,i} > 0)\\}}{\\#\\text{kept}_s}

    The states are per-member counts summed across processes, so under data
    parallelism each member's accuracy is over all points of all processes.
    (``BinaryAccuracy(multidim_average="samplewise")`` would instead concatenate
    the members of all processes.) A member with no kept point gets NaN.

    Args:
        num_members: ``S``.
    """

    full_state_update = False

    def __init__(self, num_members: int) -> None:
        super().__init__()
        self.add_state("correct", torch.zeros(num_members, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_members, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, outputs: Tensor, labels: Tensor, keep: Tensor | None = None) -> None:
        """Count the points of one batch.

        Args:
            outputs: ``(S, N)``, the signed network outputs.
            labels: ``(S, N)`` in ``{-1, +1}``.
            keep: ``(S, N)`` boolean, the points to count; all if ``None``.
        """
        if outputs.shape != labels.shape or outputs.ndim != 2:
            raise ValueError(f"outputs and labels must both have shape (S, N), got {tuple(outputs.shape)} and "
                             f"{tuple(labels.shape)}")
        correct = (outputs > 0) == (labels > 0)
        if keep is not None:
            correct = correct & keep
            self.total += keep.sum(dim=-1, dtype=torch.float64)
        else:
            self.total += labels.shape[-1]
        self.correct += correct.sum(dim=-1, dtype=torch.float64)

    def compute(self) -> Tensor:
        """Return the accuracies ``(S,)``."""
        return torch.where(self.total > 0, self.correct / self.total, torch.nan)
