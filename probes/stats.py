"""Ensemble statistics: one logged scalar per tag for a run that trains S seeds at once."""

from collections.abc import Container, Mapping
from typing import Any

import torch
from torch import Tensor

QUANTILES = (0.2, 0.8)
"""Quantiles logged beside the median of an ensemble, as ``<tag>_q20`` and ``<tag>_q80``."""


def ensemble_summary(tag: str, values: Tensor) -> dict[str, Tensor]:
    """Summarize per-seed values of one quantity as the scalars to log.

    A single seed is logged as its value under ``tag``. For ``S > 1`` seeds,
    ``tag`` is the median, and ``<tag>_q20`` and ``<tag>_q80`` are the 20% and
    80% quantiles, with linear interpolation between order statistics (the
    default of ``torch.quantile`` and ``numpy.quantile``). Seeds whose value is
    NaN, such as a flipped-point accuracy with no flipped point, are left out.

    Args:
        tag: the TensorBoard tag, ``<group>/<quantity>``.
        values: shape ``(S,)``, one value per seed.

    Returns:
        A mapping from tag to a 0-dimensional tensor.
    """
    if values.ndim != 1:
        raise ValueError(f"values for {tag!r} must have shape (S,), got {tuple(values.shape)}")
    values = values.detach()
    if values.numel() == 1:
        return {tag: values[0]}

    finite = values[~torch.isnan(values)]
    if finite.numel() == 0:
        finite = values[:1]  # all NaN: log NaN rather than fail
    levels = torch.tensor([0.5, *QUANTILES], dtype=finite.dtype, device=finite.device)
    median, low, high = torch.quantile(finite, levels)
    return {tag: median, f"{tag}_q20": low, f"{tag}_q80": high}


def log_ensemble(module: Any, tag: str, values: Tensor, step: int | None = None, **log_kwargs: Any) -> None:
    """Log per-seed ``values`` of one tag; see :func:`log_ensembles`."""
    log_ensembles(module, {tag: values}, step=step, **log_kwargs)


def log_ensembles(
    module: Any,
    values: Mapping[str, Tensor],
    step: int | None = None,
    prog_bar: Container[str] = (),
    **log_kwargs: Any,
) -> None:
    """Log per-seed values as :func:`ensemble_summary` defines, at optimizer step ``step``.

    The scalars are written to every logger of the trainer at ``step``, by
    default ``trainer.global_step``, the number of optimizer steps taken. The
    value under each ``tag`` itself (the median of an ensemble) also goes through
    ``module.log(..., logger=False)``, so that ``ModelCheckpoint``,
    ``EarlyStopping``, the progress bar and ``trainer.callback_metrics`` see it.
    The ``_q20``, ``_q80`` and per-seed tags go to the loggers only, because each
    ``LightningModule.log`` call costs about a millisecond (Lightning 2.6 on a
    CPU), which for an ensemble would cost more than a span-parametrized step.
    If ``module.log_per_seed`` is true, each seed's value of an ensemble is
    logged too, as ``<tag>_seed<s>``.

    Lightning's own logger step (Lightning 2.6) cannot serve here, for two
    reasons. It files values logged at epoch end under the last batch, so the weights after the final step
    would share a step with the weights before it. And it re-sends a value logged
    once at every later step of the same epoch.

    Args:
        module: the LightningModule, attached to a trainer.
        values: per-seed values ``(S,)`` by tag.
        step: the step the values describe; ``trainer.global_step`` if ``None``.
        prog_bar: tags to show on the progress bar.
        log_kwargs: passed to ``module.log``, e.g. ``on_step`` and ``on_epoch``.
    """
    trainer = module.trainer
    step = trainer.global_step if step is None else step

    per_seed_tags = bool(getattr(module, "log_per_seed", False))
    scalars: dict[str, Tensor] = {}
    for tag, per_seed in values.items():
        scalars.update(ensemble_summary(tag, per_seed))
        if per_seed_tags and per_seed.numel() > 1:
            scalars.update({f"{tag}_seed{member}": value for member, value in enumerate(per_seed.detach())})

    for tag in values:
        module.log(tag, scalars[tag], logger=False, prog_bar=tag in prog_bar, batch_size=1, **log_kwargs)
    if trainer.is_global_zero:
        as_floats = {name: float(value) for name, value in scalars.items()}
        for logger in trainer.loggers:
            logger.log_metrics(as_floats, step=step)
