"""Span-parametrized full-batch GD: the same trajectory as dense GD without the ``(S, m, p)`` weights.

Gradient descent on the first layer only moves ``W`` inside ``W(0)`` plus the row
span of the training inputs, because ``dL/dW = G X`` with ``G = dL/dZ`` and
``Z = W X^T``. Writing ``W(t) = W(0) + C(t) X`` with an ``(m, n)`` coefficient
matrix ``C`` gives

    Z(t) = Z(0) + C(t) K,   K = X X^T,   C(t + 1) = C(t) - lr G(t),

so a step costs ``O(m n^2)`` instead of the ``O(m n p)`` of a dense step. Every
quantity that the metrics and the probes read is an inner product of ``W(t)``
with a training input, a test input or a cluster mean, or a norm of a
combination of the rows of ``W(t)``. Each one expands into inner products of
``W(0)`` and of the data, which :func:`compute_span_products` computes once, one
ensemble member at a time, plus a product with ``C(t)``.

The identity holds for plain GD and for momentum on the first layer with the
output weights fixed. It does not hold for Adam or any other optimizer that
rescales coordinates.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from einops import einsum, rearrange
from torch import Tensor, nn

from lightning_grok.functional import logistic_loss, network_outputs, output_gradient, preactivation_gradient
from lightning_grok.model import XORNetwork
from probes.snapshot import NetworkSnapshot, scaled_norm


@dataclass(frozen=True)
class SpanProducts:
    """Inner products of ``W(0)`` and of the data, from which span-parametrized GD works.

    They depend only on the model seeds and the data, so they are recomputed
    after a resume instead of being stored in the checkpoint.

    Attributes:
        train_gram: ``(S, n, n)``, ``K = X X^T``.
        test_gram: ``(S, n_test, n)``, ``<x_test, x_i>``.
        train_mean_products: ``(S, n, 2)``, ``<x_i, mu_k>``.
        input_norms: ``(S, n)``, ``||x_i||``.
        initial_train_preactivations: ``(S, m, n)``, ``Z(0) = W(0) X^T``.
        initial_test_preactivations: ``(S, m, n_test)``, ``W(0) X_test^T``.
        initial_mean_projections: ``(S, m, 2)``, ``<w_j(0), mu_k>``.
        initial_neuron_norms: ``(S, m)``, ``||w_j(0)||``.
        initial_linear_norm: ``(S,)``, ``||v(0)||`` with ``v(0) = (1/2) sum_j a_j w_j(0)``.
    """

    train_gram: Tensor
    test_gram: Tensor
    train_mean_products: Tensor
    input_norms: Tensor
    initial_train_preactivations: Tensor
    initial_test_preactivations: Tensor
    initial_mean_projections: Tensor
    initial_neuron_norms: Tensor
    initial_linear_norm: Tensor


def compute_span_products(
    initial_hidden_weights: Callable[[int], Tensor],
    output_weights: Tensor,
    cluster_means: Tensor,
    train_inputs: Tensor,
    test_inputs: Tensor,
    dtype: torch.dtype,
    device: torch.device,
) -> SpanProducts:
    """Compute the :class:`SpanProducts` of ``S`` members in ``dtype`` on ``device``.

    Only one member's ``W(0)`` exists at a time. It is rounded to float32 before
    it is cast to ``dtype``, as :class:`~lightning_grok.model.DenseXORNetwork`
    stores it, so that both parametrizations start from the same weights.

    Args:
        initial_hidden_weights: returns the ``(m, p)`` weights ``W(0)`` of a member.
        output_weights: ``(S, m)``.
        cluster_means: ``(S, 2, p)``.
        train_inputs: ``(S, n, p)``.
        test_inputs: ``(S, n_test, p)``.
        dtype: the dtype of every returned tensor.
        device: the device of every returned tensor.
    """
    members = []
    for member in range(output_weights.shape[0]):
        inputs = train_inputs[member].to(device=device, dtype=dtype)  # (n, p)
        test = test_inputs[member].to(device=device, dtype=dtype)  # (n_test, p)
        means = cluster_means[member].to(device=device, dtype=dtype)  # (2, p)
        output = output_weights[member].to(device=device, dtype=dtype)  # (m,)
        initial = initial_hidden_weights(member).to(torch.float32).to(device=device, dtype=dtype)  # (m, p)

        linear_direction = einsum(output, initial, "m, m p -> p") / 2
        members.append({
            "train_gram": einsum(inputs, inputs, "i p, k p -> i k"),
            "test_gram": einsum(test, inputs, "t p, i p -> t i"),
            "train_mean_products": einsum(inputs, means, "i p, k p -> i k"),
            "input_norms": scaled_norm(inputs, dim=-1),
            "initial_train_preactivations": einsum(initial, inputs, "m p, i p -> m i"),
            "initial_test_preactivations": einsum(initial, test, "m p, t p -> m t"),
            "initial_mean_projections": einsum(initial, means, "m p, k p -> m k"),
            "initial_neuron_norms": scaled_norm(initial, dim=-1),
            "initial_linear_norm": scaled_norm(linear_direction, dim=-1),
        })
        del initial, linear_direction

    return SpanProducts(**{name: torch.stack([member[name] for member in members]) for name in members[0]})


def span_row_norms(
    initial_norms: Tensor,
    initial_products: Tensor,
    coefficients: Tensor,
    coefficient_gram: Tensor,
    input_norms: Tensor,
) -> Tensor:
    """Compute ``||u||`` for rows ``u = u0 + sum_i c_i x_i`` from inner products alone.

    Expands ``||u||^2 = ||u0||^2 + 2 sum_i c_i <x_i, u0> + sum_{i,k} c_i c_k <x_i, x_k>``.
    Every term is first divided by the bound ``b = ||u0|| + sum_i |c_i| ||x_i||
    >= ||u||``, so no square underflows however small the weights are, and the
    result scales exactly with ``u0`` and ``c``.

    NOTE: the expansion subtracts terms of size up to ``b^2``, so when ``||u||`` is
    far below ``b`` (a row that GD moved back near zero) the relative error grows
    like ``eps * (b / ||u||)^2``.

    Args:
        initial_norms: ``(S, r)``, ``||u0||``.
        initial_products: ``(S, r, n)``, ``<u0, x_i>``.
        coefficients: ``(S, r, n)``, ``c_i``.
        coefficient_gram: ``(S, r, n)``, ``sum_k c_k <x_k, x_i>``.
        input_norms: ``(S, n)``, ``||x_i||``.

    Returns:
        ``(S, r)``.
    """
    bound = initial_norms + einsum(coefficients.abs(), input_norms, "s r n, s n -> s r")
    scale = torch.where(bound > 0, bound, torch.ones_like(bound))
    row_scale = scale[..., None]

    initial_part = (initial_norms / scale) ** 2
    cross_part = 2 * ((coefficients / row_scale) * (initial_products / row_scale)).sum(dim=-1)
    span_part = ((coefficients / row_scale) * (coefficient_gram / row_scale)).sum(dim=-1)
    # Rounding can push the sum of a zero-norm row slightly below zero.
    squared = (initial_part + cross_part + span_part).clamp(min=0)
    return scale * squared.sqrt()


class SpanXORNetwork(XORNetwork):
    """Full-batch GD on ``W(t) = W(0) + C(t) X``: the dense trajectory at ``O(m n^2)`` per step.

    The trained parameter is ``coefficients``, ``C`` of shape ``(S, m, n)``, zero at
    the start and stepped by ``torch.optim.SGD`` with ``C.grad = dL/dZ``. It is
    created when the number of training points is known, in :meth:`configure_model`,
    and it is the only trained state in a checkpoint. ``W(0)`` is drawn exactly
    as :class:`~lightning_grok.model.DenseXORNetwork` draws it, so both start from
    the same weights and follow the same trajectory up to rounding.

    The module reads the inputs and the cluster means from ``trainer.datamodule``
    (attributes ``train_inputs``, ``test_inputs`` and ``cluster_means``) and only
    the labels from each batch. Except in :meth:`hidden_weight_matrix`, it never
    creates an ``(S, m, p)`` tensor. A step works on ``(S, m, n)`` tensors, and
    computing the products at the start draws one member's ``(m, p)`` weights at
    a time.

    Takes the same arguments as :class:`~lightning_grok.model.XORNetwork`.
    """

    # The Gram matrices and the preactivations span all n points, and C.grad is set
    # by hand, which DistributedDataParallel does not average, so a shard of the
    # labels per process would step a wrong C.
    supports_data_parallel = False

    def __init__(self, input_dim: int, **kwargs: Any) -> None:
        super().__init__(input_dim, **kwargs)
        self.automatic_optimization = False
        self.register_parameter("coefficients", None)  # (S, m, n) once n is known
        self._products: SpanProducts | None = None
        self._products_key: tuple[torch.dtype, torch.device] | None = None
        self._workspace: Tensor | None = None  # scratch space of gd_step, see _step_workspace

    # ---- parameter and precomputed products ----------------------------------------------

    def configure_model(self) -> None:
        # Lightning calls this before it restores a checkpoint, and under 64-true
        # precision with float64 as the default dtype, so C is created in the
        # dtype and on the device that the checkpoint is restored into.
        # load_from_checkpoint calls it with no trainer, and then C takes its
        # shape from the checkpoint in on_load_checkpoint.
        super().configure_model()
        if self._trainer is None or self._trainer.datamodule is None:
            return
        num_train = self._datamodule().train_inputs.shape[1]
        if self.coefficients is None:
            self.coefficients = nn.Parameter(torch.zeros(self.num_seeds, self.width, num_train))
        elif self.coefficients.shape[-1] != num_train:
            raise ValueError(
                f"the span coefficients have shape {tuple(self.coefficients.shape)} (S, m, n), "
                f"but the data module has n = {num_train} training points"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        # Loading outside a Trainer (load_from_checkpoint) has no data module to
        # size C from, so the checkpoint's own tensor gives its shape.
        saved = checkpoint.get("state_dict", {}).get("coefficients")
        if self.coefficients is None and saved is not None:
            self.coefficients = nn.Parameter(torch.zeros_like(saved))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([self._coefficients()], lr=self.lr, momentum=0.0, weight_decay=0.0)

    def span_products(self) -> SpanProducts:
        """Return the :class:`SpanProducts` in the dtype and on the device of ``C``.

        They are computed on first use and again whenever the dtype or the device
        of ``C`` changes, for example after ``Trainer`` converts the module to
        float64 or moves it to an accelerator.
        """
        coefficients = self._coefficients()
        key = (coefficients.dtype, coefficients.device)
        if self._products is None or self._products_key != key:
            self._products = None  # release the old products before computing new ones
            datamodule = self._datamodule()
            self._products = compute_span_products(
                self.initial_hidden_weights,
                self.output_weight,
                datamodule.cluster_means,
                datamodule.train_inputs,
                datamodule.test_inputs,
                dtype=key[0],
                device=key[1],
            )
            self._products_key = key
        return self._products

    # ---- the parametrization -------------------------------------------------------------

    @torch.no_grad()
    def split_outputs(self, batch: dict[str, Tensor], split: str) -> Tensor:
        preactivations = self._preactivations(split)
        self._check_batch(batch, split, preactivations.shape[-1])
        return network_outputs(preactivations, self._output_weights())

    @torch.no_grad()
    def gd_step(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        # Z(t) = Z(0) + C(t) K is recomputed, not updated as Z <- Z - lr G K: both cost
        # one product, but the recomputed Z cannot drift from C and needs no state
        # of its own in a checkpoint.
        optimizer = self.optimizers()
        optimizer.zero_grad()  # drops C.grad, which is the workspace written below
        workspace = self._step_workspace()
        preactivations = self._preactivations("train", out=workspace)  # (S, m, n)
        num_train = preactivations.shape[-1]
        self._check_batch(batch, "train", num_train)

        output_weights = self._output_weights()
        labels = batch["train_labels"].to(preactivations.dtype)
        # network_outputs(Z) with relu(Z) taken in place, since only relu(Z) is read from here on.
        hidden = preactivations.relu_()
        outputs = einsum(output_weights, hidden, "s m, s m n -> s n")
        loss = logistic_loss(outputs, labels)  # (S,)

        # dL/dW = G X, so the step W <- W - lr G X is the step C <- C - lr G.
        output_grad = output_gradient(outputs, labels, num_train)
        self._coefficients().grad = preactivation_gradient(hidden, output_weights, output_grad, out=workspace)
        optimizer.step()
        return outputs, loss

    @torch.no_grad()
    def probe_snapshot(self) -> NetworkSnapshot:
        """Build the :class:`~probes.snapshot.NetworkSnapshot` of ``W(t)`` without materializing it.

        Uses ``<w_j, mu_k> = <w_j(0), mu_k> + sum_i C_ji <x_i, mu_k>`` and
        ``v = v(0) + (1/2) sum_i (a^T C)_i x_i`` for the linear part
        ``v = (1/2) sum_j a_j w_j``. The norms come from :func:`span_row_norms`.
        """
        products = self.span_products()
        coefficients = self._coefficients().detach()
        output_weights = self._output_weights()
        coefficient_gram = einsum(coefficients, products.train_gram, "s m i, s i k -> s m k")  # C K, (S, m, n)

        linear_coefficients = einsum(output_weights, coefficients, "s m, s m n -> s n") / 2  # (S, n)
        linear_gram = einsum(output_weights, coefficient_gram, "s m, s m n -> s n") / 2
        initial_linear_products = einsum(
            output_weights, products.initial_train_preactivations, "s m, s m n -> s n"
        ) / 2  # <v(0), x_i>
        linear_norm = span_row_norms(
            products.initial_linear_norm[:, None],
            initial_linear_products[:, None],
            linear_coefficients[:, None],
            linear_gram[:, None],
            products.input_norms,
        )

        return NetworkSnapshot(
            output_weights=output_weights,
            train_preactivations=products.initial_train_preactivations + coefficient_gram,
            test_preactivations=self._preactivations("test"),
            mean_projections=products.initial_mean_projections
            + einsum(coefficients, products.train_mean_products, "s m i, s i k -> s m k"),
            neuron_norms=span_row_norms(
                products.initial_neuron_norms,
                products.initial_train_preactivations,
                coefficients,
                coefficient_gram,
                products.input_norms,
            ),
            linear_norm=linear_norm[:, 0],
        )

    @torch.no_grad()
    def hidden_weight_matrix(self) -> Tensor:
        """Materialize ``W(t) = W(0) + C(t) X`` of shape ``(S, m, p)``, for small problems only.

        This is what the span parametrization exists to avoid: at ``S = 100``,
        ``m = 1000``, ``p = 40000`` the result takes 16 GB in float32. Tests use it
        to compare with :class:`~lightning_grok.model.DenseXORNetwork`.
        """
        coefficients = self._coefficients().detach()
        train_inputs = self._datamodule().train_inputs.to(device=coefficients.device, dtype=coefficients.dtype)
        rows = []
        for member in range(self.num_seeds):
            initial = self.initial_hidden_weights(member).to(torch.float32).to(coefficients)
            rows.append(initial + einsum(coefficients[member], train_inputs[member], "m n, n p -> m p"))
        return torch.stack(rows)

    # ---- helpers -------------------------------------------------------------------------

    def _preactivations(self, split: str, out: Tensor | None = None) -> Tensor:
        """Return ``<w_j(t), x>`` of shape ``(S, m, N)`` over the ``"train"`` or ``"test"`` inputs.

        The result is written into ``out`` if it is given, else into a new tensor.
        """
        products = self.span_products()
        coefficients = self._coefficients().detach()
        if split == "train":
            gram, initial = products.train_gram, products.initial_train_preactivations
        elif split == "test":
            gram, initial = products.test_gram, products.initial_test_preactivations
        else:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        # C(t) K^T: the batched product that einsum(C, K, "s m i, s t i -> s m t") computes, but into `out`.
        product = torch.bmm(coefficients, rearrange(gram, "s t i -> s i t"), out=out)
        return product.add_(initial)

    def _step_workspace(self) -> Tensor:
        """Return an ``(S, m, n)`` tensor like ``C`` that :meth:`gd_step` overwrites on every step.

        Reusing it saves allocating and first touching two tensors of that size per
        step, which at ``S = 100, m = 1000, n = 200`` (80 MB each in float32) took
        longer than the elementwise arithmetic of the step.
        """
        coefficients = self._coefficients()
        workspace = self._workspace
        if workspace is None or workspace.shape != coefficients.shape or workspace.dtype != coefficients.dtype \
                or workspace.device != coefficients.device:
            workspace = self._workspace = torch.empty_like(coefficients, requires_grad=False)
        return workspace

    def _output_weights(self) -> Tensor:
        coefficients = self._coefficients()
        return self.output_weight.to(device=coefficients.device, dtype=coefficients.dtype)

    def _coefficients(self) -> nn.Parameter:
        if self.coefficients is None:
            raise RuntimeError(
                "SpanXORNetwork.coefficients does not exist yet: it is created in configure_model, "
                "which Trainer.fit, validate and test call once the data module is set up"
            )
        return self.coefficients

    def _datamodule(self) -> Any:
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        if datamodule is None:
            raise RuntimeError(
                "SpanXORNetwork reads its inputs from trainer.datamodule; "
                "pass a data module to Trainer.fit, validate or test"
            )
        return datamodule

    def _check_batch(self, batch: dict[str, Tensor], split: str, num_points: int) -> None:
        # The products come from the data module, so a batch of other data would
        # be scored silently against the wrong inputs.
        inputs = batch.get(f"{split}_inputs")
        expected = (self.num_seeds, num_points)
        if inputs is not None and tuple(inputs.shape[:2]) != expected:
            raise ValueError(
                f"batch[{split + '_inputs'!r}] has shape {tuple(inputs.shape)}, but the data module that "
                f"SpanXORNetwork precomputed from has (S, N) = {expected}"
            )
