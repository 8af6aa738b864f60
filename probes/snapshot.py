"""The interface through which probes see a two-layer ReLU network and its cluster data.

Probes never read a module's parameters directly. They read a
:class:`NetworkSnapshot`, the inner products of each hidden weight vector
``w_j`` with the training inputs, the test inputs and the cluster means, and a
:class:`ClusterData`, the labels and the geometry of the data. A dense module
provides the snapshot through :func:`dense_snapshot`. A module that never
materializes its ``(S, m, p)`` weights, such as a span-parametrized one,
provides it from its own method (see :class:`ProbeAccess`).

Every tensor carries a leading ensemble dimension ``S``: a single network has
``S = 1``.
"""

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from einops import einsum, rearrange
from torch import Tensor


@dataclass(frozen=True)
class NetworkSnapshot:
    """Inner products of S networks ``f(x) = sum_j a_j relu(<w_j, x>)`` at one step.

    Attributes:
        output_weights: ``(S, m)``, the output weights ``a_j``.
        train_preactivations: ``(S, m, n)``, ``<w_j, x_i>`` over training inputs.
        test_preactivations: ``(S, m, n_test)``, ``<w_j, x>`` over test inputs.
        mean_projections: ``(S, m, 2)``, ``<w_j, mu_k>`` for the two cluster means.
        neuron_norms: ``(S, m)``, ``||w_j||``.
        linear_norm: ``(S,)``, ``||v||`` with ``v = (1/2) sum_j a_j w_j``.
    """

    output_weights: Tensor
    train_preactivations: Tensor
    test_preactivations: Tensor
    mean_projections: Tensor
    neuron_norms: Tensor
    linear_norm: Tensor

    @property
    def frobenius_norm(self) -> Tensor:
        """``(S,)``, ``||W||_F``, computed from the neuron norms without underflow."""
        return scaled_norm(self.neuron_norms, dim=-1)


@dataclass(frozen=True)
class ClusterData:
    """Labels and geometry of the cluster data of S ensemble members.

    Labels are in ``{-1, +1}``.

    Attributes:
        train_labels: ``(S, n)``, the training labels as trained on, flipped ones included.
        flip_mask: ``(S, n)``, ``True`` where a training label was flipped.
        test_labels: ``(S, n_test)``, the clean test labels.
        mean_norms: ``(S, 2)``, ``||mu_1||`` and ``||mu_2||``.
        train_mean_projections: ``(S, n, 2)``, ``<x_i, mu_k>``.
        label_sum_norm: ``(S,)``, ``||sum_i y_i x_i||``, the norm of the direction of
            the linear classifier ``x -> <sum_i y_i x_i, x>``.
    """

    train_labels: Tensor
    flip_mask: Tensor
    test_labels: Tensor
    mean_norms: Tensor
    train_mean_projections: Tensor
    label_sum_norm: Tensor


def scaled_norm(values: Tensor, dim: int | tuple[int, ...]) -> Tensor:
    """Compute the Euclidean norm over ``dim`` without underflow for tiny values.

    Weights of order 1e-25 square to 1e-50, which is zero in float32. When the
    largest absolute value is small enough for that to matter, the values are
    divided by it first, so that ``scaled_norm(c * x)`` equals
    ``c * scaled_norm(x)`` up to rounding for any ``c > 0``. Otherwise the plain
    norm is exact enough and saves two passes over the data.
    """
    # max |x| from one aminmax pass, which was about ten times faster on the CPU
    # (torch 2.13) than abs().amax() or an infinity norm.
    smallest, largest = torch.aminmax(values)
    largest = torch.maximum(-smallest, largest)
    finfo = torch.finfo(values.dtype)
    # Entries within a factor 2**12 of the largest one square to normal numbers.
    if largest >= finfo.tiny**0.5 * 2**12:
        return torch.linalg.vector_norm(values, dim=dim)

    scale = values.abs().amax(dim=dim, keepdim=True)
    safe_scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    norm = torch.linalg.vector_norm(values / safe_scale, dim=dim, keepdim=True)
    return (norm * scale).squeeze(dim)


def inner_products(rows: Tensor, points: Tensor) -> Tensor:
    """Compute ``<w_j, x_i>`` for rows ``(S, m, p)`` and points ``(S, N, p)``; returns ``(S, m, N)``.

    A batched matmul against the transposed view of ``points``: ``torch.einsum``
    with the same pattern took about 40% longer here (torch 2.13, CPU), since it
    copies the points into another layout first.
    """
    return torch.matmul(rows, rearrange(points, "s n p -> s p n"))


def dense_snapshot(
    hidden_weights: Tensor,
    output_weights: Tensor,
    cluster_means: Tensor,
    train_inputs: Tensor,
    test_inputs: Tensor,
) -> NetworkSnapshot:
    """Build a :class:`NetworkSnapshot` from materialized weights.

    Args:
        hidden_weights: ``(S, m, p)``, the rows ``w_j``.
        output_weights: ``(S, m)``.
        cluster_means: ``(S, 2, p)``.
        train_inputs: ``(S, n, p)``.
        test_inputs: ``(S, n_test, p)``.
    """
    hidden_weights = hidden_weights.detach()
    output_weights = output_weights.detach().to(hidden_weights.dtype)
    dtype = hidden_weights.dtype

    train_preactivations = inner_products(hidden_weights, train_inputs.to(dtype))
    test_preactivations = inner_products(hidden_weights, test_inputs.to(dtype))
    mean_projections = inner_products(hidden_weights, cluster_means.to(dtype))

    linear_direction = einsum(output_weights, hidden_weights, "s m, s m p -> s p") / 2
    return NetworkSnapshot(
        output_weights=output_weights,
        train_preactivations=train_preactivations,
        test_preactivations=test_preactivations,
        mean_projections=mean_projections,
        neuron_norms=scaled_norm(hidden_weights, dim=-1),
        linear_norm=scaled_norm(linear_direction, dim=-1),
    )


def cluster_data(
    cluster_means: Tensor,
    train_inputs: Tensor,
    train_labels: Tensor,
    flip_mask: Tensor,
    test_labels: Tensor,
) -> ClusterData:
    """Build :class:`ClusterData` from the data tensors, all with a leading ``S``.

    Args:
        cluster_means: ``(S, 2, p)``.
        train_inputs: ``(S, n, p)``.
        train_labels: ``(S, n)`` in ``{-1, +1}``.
        flip_mask: ``(S, n)``, boolean.
        test_labels: ``(S, n_test)`` in ``{-1, +1}``.
    """
    dtype = train_inputs.dtype
    train_labels = train_labels.to(dtype)
    label_sum = einsum(train_labels, train_inputs, "s n, s n p -> s p")
    return ClusterData(
        train_labels=train_labels,
        flip_mask=flip_mask.bool(),
        test_labels=test_labels.to(dtype),
        mean_norms=torch.linalg.vector_norm(cluster_means, dim=-1),
        train_mean_projections=einsum(train_inputs, cluster_means.to(dtype), "s n p, s k p -> s n k"),
        label_sum_norm=torch.linalg.vector_norm(label_sum, dim=-1),
    )


# Per-trainer caches of the last snapshot and of the cluster data, keyed weakly so
# that a finished trainer releases them.
_SNAPSHOT_CACHE: "weakref.WeakKeyDictionary[Any, tuple[tuple, NetworkSnapshot]]" = weakref.WeakKeyDictionary()
_CLUSTER_DATA_CACHE: "weakref.WeakKeyDictionary[Any, tuple[tuple, ClusterData]]" = weakref.WeakKeyDictionary()


@dataclass
class ProbeAccess:
    """Where a probe finds the network and the data, as dotted attribute paths.

    Each path starts at one of three roots: ``module`` (the LightningModule),
    ``datamodule`` (``trainer.datamodule``) or ``trainer``. For example
    ``"module.net.0.weight"`` reads ``pl_module.net[0].weight``; a numeric part
    indexes a sequence or ``nn.Sequential``. Tensors may omit the ensemble
    dimension (``(m, p)`` weights, ``(n, p)`` inputs, ``(n,)`` labels), and labels
    may be ``{0, 1}`` in place of ``{-1, +1}``.

    The defaults fit ``lightning_grok``. If the module has a method named
    ``snapshot_method``, the probe calls it for the :class:`NetworkSnapshot` and
    ignores ``hidden_weight`` and ``output_weight``, so a wrong path there is not
    reported. Set ``snapshot_method`` to ``None`` to always read the weights.

    Attributes:
        hidden_weight: ``(S, m, p)`` or ``(m, p)``, the first-layer weights.
        output_weight: ``(S, m)``, ``(m,)`` or ``(1, m)``, the output weights.
        cluster_means: ``(S, 2, p)`` or ``(2, p)``, the means ``mu_1`` and ``mu_2``.
        train_inputs: ``(S, n, p)`` or ``(n, p)``.
        train_labels: the training labels as trained on.
        flip_mask: ``True`` where a training label was flipped.
        test_inputs: ``(S, n_test, p)`` or ``(n_test, p)``.
        test_labels: the clean test labels.
        snapshot_method: the name of a module method returning a :class:`NetworkSnapshot`.
    """

    hidden_weight: str = "module.hidden_weight"
    output_weight: str = "module.output_weight"
    cluster_means: str = "datamodule.cluster_means"
    train_inputs: str = "datamodule.train_inputs"
    train_labels: str = "datamodule.train_labels"
    flip_mask: str = "datamodule.flip_mask"
    test_inputs: str = "datamodule.test_inputs"
    test_labels: str = "datamodule.test_labels"
    snapshot_method: str | None = "probe_snapshot"

    def network_snapshot(self, trainer: Any, pl_module: Any) -> NetworkSnapshot:
        """Read the network of ``pl_module`` at its current weights.

        Probes of one trainer that read the same paths at the same optimizer step
        share one snapshot, so that several probes cost one pass over the data.
        """
        if trainer is None:
            return self._read_snapshot(trainer, pl_module)
        key = (id(pl_module), trainer.global_step, repr(self))
        cached = _SNAPSHOT_CACHE.get(trainer)
        if cached is None or cached[0] != key:
            cached = (key, self._read_snapshot(trainer, pl_module))
            _SNAPSHOT_CACHE[trainer] = cached
        return cached[1]

    def _read_snapshot(self, trainer: Any, pl_module: Any) -> NetworkSnapshot:
        method = getattr(pl_module, self.snapshot_method, None) if self.snapshot_method else None
        if callable(method):
            return method()

        hidden = self._read(trainer, pl_module, "hidden_weight", ndim=3)
        output = self._read(trainer, pl_module, "output_weight", ndim=2)
        data = self._read_many(trainer, pl_module, ("cluster_means", "train_inputs", "test_inputs"), ndim=3)
        return dense_snapshot(hidden, output, *data)

    def cluster_data(self, trainer: Any, pl_module: Any) -> ClusterData:
        """Read the labels and geometry of the data.

        The result is computed once per trainer and set of paths, because the data
        do not change during training.
        """
        if trainer is None:
            return self._read_cluster_data(trainer, pl_module)
        key = (id(pl_module), repr(self))
        cached = _CLUSTER_DATA_CACHE.get(trainer)
        if cached is None or cached[0] != key:
            cached = (key, self._read_cluster_data(trainer, pl_module))
            _CLUSTER_DATA_CACHE[trainer] = cached
        return cached[1]

    def _read_cluster_data(self, trainer: Any, pl_module: Any) -> ClusterData:
        means, train_inputs = self._read_many(trainer, pl_module, ("cluster_means", "train_inputs"), ndim=3)
        train_labels = _as_signed_labels(self._read(trainer, pl_module, "train_labels", ndim=2), self.train_labels)
        test_labels = _as_signed_labels(self._read(trainer, pl_module, "test_labels", ndim=2), self.test_labels)
        flip_mask = self._read(trainer, pl_module, "flip_mask", ndim=2)
        return cluster_data(means, train_inputs, train_labels, flip_mask, test_labels)

    def check(self, trainer: Any, pl_module: Any) -> None:
        """Resolve every path once, so that a wrong path fails before training starts."""
        self.network_snapshot(trainer, pl_module)
        self.cluster_data(trainer, pl_module)

    def _read_many(self, trainer: Any, pl_module: Any, fields: tuple[str, ...], ndim: int) -> list[Tensor]:
        return [self._read(trainer, pl_module, field, ndim) for field in fields]

    def _read(self, trainer: Any, pl_module: Any, field: str, ndim: int) -> Tensor:
        path = getattr(self, field)
        value = resolve_path(path, module=pl_module, datamodule=getattr(trainer, "datamodule", None), trainer=trainer)
        if not isinstance(value, Tensor):
            raise ProbeAccessError(f"probe access {field}={path!r} must name a tensor, got {type(value).__name__}")
        # Data modules often keep their tensors on the CPU while the module is on an accelerator.
        value = value.detach().to(device=getattr(pl_module, "device", None))
        if field == "output_weight" and value.ndim == 2 and value.shape[0] == 1:
            return value  # nn.Linear(m, 1).weight: one network
        while value.ndim < ndim:
            value = rearrange(value, "... -> 1 ...")
        if value.ndim != ndim:
            raise ProbeAccessError(
                f"probe access {field}={path!r} has shape {tuple(value.shape)}; "
                f"expected {ndim} dimensions with the ensemble dimension first, or {ndim - 1} without it"
            )
        return value


class ProbeAccessError(AttributeError):
    """Raised when a :class:`ProbeAccess` path does not lead to a usable tensor.

    The path may name an attribute that does not exist, something that is not a
    tensor, a tensor of the wrong shape, or labels outside ``{-1, +1}`` and
    ``{0, 1}``. A dedicated class lets a command line tell a wrong path in its
    settings from an error raised by a bug.
    """


def resolve_path(path: str, **roots: Any) -> Any:
    """Follow a dotted path such as ``"module.net.0.weight"`` from one of ``roots``.

    Raises:
        ProbeAccessError: naming the path and the first part that does not exist.
    """
    root_name, *parts = path.split(".")
    if root_name not in roots:
        raise ProbeAccessError(f"probe path {path!r} must start with one of {sorted(roots)}, got {root_name!r}")
    value = roots[root_name]
    if value is None:
        raise ProbeAccessError(f"probe path {path!r} starts at {root_name!r}, which this trainer does not have")

    walked = root_name
    for part in parts:
        if hasattr(value, part):
            value = getattr(value, part)
        elif part.isdigit() and hasattr(value, "__getitem__"):
            try:
                value = value[int(part)]
            except (IndexError, KeyError):
                raise ProbeAccessError(
                    f"probe path {path!r} is invalid: {walked!r} ({type(value).__name__}) has no item {part}"
                ) from None
        else:
            raise ProbeAccessError(
                f"probe path {path!r} is invalid: {walked!r} ({type(value).__name__}) has no attribute {part!r}"
            )
        walked = f"{walked}.{part}"
    return value


def _as_signed_labels(labels: Tensor, path: str) -> Tensor:
    """Map labels in ``{0, 1}`` to ``{-1, +1}``; keep labels already in ``{-1, +1}``."""
    values = set(labels.unique().tolist())
    if values <= {-1, 1}:
        return labels
    if values <= {0, 1}:
        return 2 * labels - 1
    raise ProbeAccessError(f"labels at {path!r} must be in {{-1, +1}} or {{0, 1}}, got values {sorted(values)[:5]}")
