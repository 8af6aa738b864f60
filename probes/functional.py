"""Pure tensor functions for the probes of two-layer ReLU networks on cluster data.

The network is ``f(x) = sum_j a_j relu(<w_j, x>)``. Every function takes the
inner products a :class:`probes.snapshot.NetworkSnapshot` provides, never the
``(S, m, p)`` weights, and keeps the leading ensemble dimension ``S``.

Scale. Trained weights can be as small as 1e-25 in the runs this package
serves, so every cosine, share and ratio here is a ratio of two quantities of
the same degree in the weights. Sums of squares are taken after dividing by
the largest absolute value, and a zero denominator gives NaN instead of an
epsilon-clamped number.
"""

import torch
from einops import einsum, rearrange
from torch import Tensor


def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """Divide elementwise, with NaN where the denominator is zero."""
    nan = torch.full_like(numerator, float("nan"))
    safe_denominator = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator != 0, numerator / safe_denominator, nan)


def mean_cosines(mean_projections: Tensor, neuron_norms: Tensor, mean_norms: Tensor) -> Tensor:
    """Compute the cosine of each hidden weight vector with each cluster mean.

    .. math::
        \\cos(w_j, \\mu_k) = \\frac{\\langle w_j, \\mu_k \\rangle}{\\|w_j\\| \\, \\|\\mu_k\\|}

    Args:
        mean_projections: ``(S, m, 2)``, ``<w_j, mu_k>``.
        neuron_norms: ``(S, m)``, ``||w_j||``.
        mean_norms: ``(S, 2)``, ``||mu_k||``.

    Returns:
        ``(S, m, 2)``; NaN for a neuron with ``w_j = 0``.
    """
    # Dividing by ||w_j|| first keeps the quotient of order one before ||mu_k|| enters.
    per_neuron = _safe_divide(mean_projections, rearrange(neuron_norms, "s m -> s m 1"))
    return _safe_divide(per_neuron, rearrange(mean_norms, "s k -> s 1 k").to(per_neuron.dtype))


def alignment_by_sign(cosines: Tensor, output_weights: Tensor) -> Tensor:
    """Average ``|cos(w_j, mu_k)|`` over the neurons of each output-weight sign.

    .. math::
        A^{\\pm}_k = \\operatorname{mean}_{j:\\ \\pm a_j > 0} |\\cos(w_j, \\mu_k)|

    Neurons whose cosine is NaN (``w_j = 0``) are left out of the mean.

    Args:
        cosines: ``(S, m, 2)``, from :func:`mean_cosines`.
        output_weights: ``(S, m)``, ``a_j``.

    Returns:
        ``(S, 2, 2)``: index ``[s, 0, k]`` averages over ``a_j > 0`` and
        ``[s, 1, k]`` over ``a_j < 0``. NaN where a group has no neuron.
    """
    signs = torch.stack([output_weights > 0, output_weights < 0], dim=1)  # (S, 2, m)
    valid = rearrange(signs, "s g m -> s g m 1") & rearrange(~cosines.isnan(), "s m k -> s 1 m k")
    magnitudes = rearrange(cosines.abs().nan_to_num(0.0), "s m k -> s 1 m k")

    total = (magnitudes * valid).sum(dim=2)  # (S, 2, 2)
    count = valid.sum(dim=2).to(total.dtype)
    return _safe_divide(total, count)


def network_outputs(preactivations: Tensor, output_weights: Tensor) -> Tensor:
    """Compute the network outputs from the preactivations.

    .. math::
        f(x_i) = \\sum_j a_j \\operatorname{relu}(\\langle w_j, x_i \\rangle)

    Args:
        preactivations: ``(S, m, n)``, ``<w_j, x_i>``.
        output_weights: ``(S, m)``.

    Returns:
        ``(S, n)``.
    """
    return einsum(output_weights.to(preactivations.dtype), preactivations.relu(), "s m, s m n -> s n")


def linear_part(preactivations: Tensor, output_weights: Tensor) -> Tensor:
    """Compute the odd (linear) part ``<v, x>`` of the network.

    Since ``relu(z) = (z + |z|) / 2``, ``f(x) = <v, x> + g(x)`` with

    .. math::
        \\langle v, x_i \\rangle = \\tfrac12 \\sum_j a_j \\langle w_j, x_i \\rangle,
        \\qquad v = \\tfrac12 \\sum_j a_j w_j.

    Args:
        preactivations: ``(S, m, n)``, ``<w_j, x_i>``.
        output_weights: ``(S, m)``.

    Returns:
        ``(S, n)``.
    """
    return einsum(output_weights.to(preactivations.dtype), preactivations, "s m, s m n -> s n") / 2


def even_part(preactivations: Tensor, output_weights: Tensor) -> Tensor:
    """Compute the even part ``g(x)`` of the network, the only part that can classify XOR clusters.

    .. math::
        g(x_i) = \\tfrac12 \\sum_j a_j |\\langle w_j, x_i \\rangle|

    Args:
        preactivations: ``(S, m, n)``, ``<w_j, x_i>``.
        output_weights: ``(S, m)``.

    Returns:
        ``(S, n)``.
    """
    return einsum(output_weights.to(preactivations.dtype), preactivations.abs(), "s m, s m n -> s n") / 2


def linear_share(linear: Tensor, even: Tensor) -> Tensor:
    """Compute the share of the squared outputs that the linear part carries.

    .. math::
        \\text{share} = \\frac{\\sum_i \\langle v, x_i \\rangle^2}
                             {\\sum_i \\left(\\langle v, x_i \\rangle^2 + g(x_i)^2\\right)}

    Both parts are divided by their joint maximum absolute value per seed before
    squaring, so values of order 1e-25 do not underflow in float32.

    Args:
        linear: ``(S, n)``, ``<v, x_i>`` from :func:`linear_part`.
        even: ``(S, n)``, ``g(x_i)`` from :func:`even_part`.

    Returns:
        ``(S,)``; NaN for a seed whose outputs are all zero.
    """
    scale = torch.maximum(linear.abs().amax(dim=-1), even.abs().amax(dim=-1))
    safe_scale = rearrange(torch.where(scale > 0, scale, torch.ones_like(scale)), "s -> s 1")
    linear_energy = (linear / safe_scale).square().sum(dim=-1)
    even_energy = (even / safe_scale).square().sum(dim=-1)
    return _safe_divide(linear_energy, linear_energy + even_energy)


def sign_accuracy(scores: Tensor, labels: Tensor) -> Tensor:
    """Compute the accuracy of the classifier ``x -> sign(score(x))``.

    .. math::
        \\text{acc} = \\frac1n \\sum_i \\mathbb{1}[\\operatorname{sign}(s_i) = y_i]

    A score of exactly zero counts as an error, because its sign matches neither label.

    Args:
        scores: ``(S, n)``.
        labels: ``(S, n)`` in ``{-1, +1}``.

    Returns:
        ``(S,)``.
    """
    correct = torch.sign(scores) == labels.to(scores.dtype)
    return correct.to(scores.dtype).mean(dim=-1)


def linear_norm_ratio(linear_norm: Tensor, frobenius_norm: Tensor) -> Tensor:
    """Compute ``||v|| / ||W||_F``, the size of the linear part relative to all weights.

    Args:
        linear_norm: ``(S,)``, ``||v||`` with ``v = (1/2) sum_j a_j w_j``.
        frobenius_norm: ``(S,)``, ``||W||_F``.

    Returns:
        ``(S,)``; NaN where ``W = 0``.
    """
    return _safe_divide(linear_norm, frobenius_norm.to(linear_norm.dtype))


def label_sum_cosine(
    train_linear: Tensor, train_labels: Tensor, linear_norm: Tensor, label_sum_norm: Tensor
) -> Tensor:
    """Compute the cosine between ``v`` and the label-weighted sum of training inputs.

    After one step of gradient descent from a small initialization, the network
    is close to the linear classifier ``x -> <sum_i y_i x_i, x>``. This cosine
    measures how close ``v`` is to that direction. The inner product never
    needs ``v`` itself:

    .. math::
        \\cos\\Big(v, \\sum_i y_i x_i\\Big)
        = \\frac{\\sum_i y_i \\langle v, x_i \\rangle}{\\|v\\| \\, \\|\\sum_i y_i x_i\\|}

    Args:
        train_linear: ``(S, n)``, ``<v, x_i>`` over the training inputs.
        train_labels: ``(S, n)`` in ``{-1, +1}``, as trained on.
        linear_norm: ``(S,)``, ``||v||``.
        label_sum_norm: ``(S,)``, ``||sum_i y_i x_i||``.

    Returns:
        ``(S,)``; NaN where ``v = 0`` or the label sum is zero.
    """
    inner = einsum(train_labels.to(train_linear.dtype), train_linear, "s n, s n -> s")
    per_norm = _safe_divide(inner, linear_norm.to(inner.dtype))
    return _safe_divide(per_norm, label_sum_norm.to(inner.dtype))


def normalized_margins(outputs: Tensor, labels: Tensor, frobenius_norm: Tensor) -> Tensor:
    """Compute the margins ``y_i f(x_i)`` divided by ``||W||_F``.

    The network is 1-homogeneous in ``W``, so the quotient does not depend on
    the scale of the weights.

    Args:
        outputs: ``(S, n)``, ``f(x_i)``.
        labels: ``(S, n)`` in ``{-1, +1}``.
        frobenius_norm: ``(S,)``, ``||W||_F``.

    Returns:
        ``(S, n)``; NaN for a seed with ``W = 0``.
    """
    margins = labels.to(outputs.dtype) * outputs
    return _safe_divide(margins, rearrange(frobenius_norm.to(outputs.dtype), "s -> s 1"))


def masked_min(values: Tensor, mask: Tensor) -> Tensor:
    """Take the minimum of ``values`` over the entries where ``mask`` is true.

    Args:
        values: ``(S, n)``.
        mask: ``(S, n)``, boolean.

    Returns:
        ``(S,)``; NaN for a seed with no entry selected.
    """
    filled = torch.where(mask, values, torch.full_like(values, float("inf")))
    minimum = filled.amin(dim=-1)
    return torch.where(mask.any(dim=-1), minimum, torch.full_like(minimum, float("nan")))


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Average ``values`` over the entries where ``mask`` is true.

    Args:
        values: ``(S, n)``.
        mask: ``(S, n)``, boolean.

    Returns:
        ``(S,)``; NaN for a seed with no entry selected.
    """
    total = torch.where(mask, values, torch.zeros_like(values)).sum(dim=-1)
    return _safe_divide(total, mask.sum(dim=-1).to(values.dtype))


def plane_coordinates(mean_projections: Tensor, mean_norms: Tensor) -> Tensor:
    """Compute coordinates in the plane ``span(mu_1, mu_2)`` with unit vectors ``e_k = mu_k / ||mu_k||``.

    .. math::
        c_k(u) = \\frac{\\langle u, \\mu_k \\rangle}{\\|\\mu_k\\|}

    The means are orthogonal, so ``(c_1, c_2)`` are the coordinates of the
    orthogonal projection of ``u`` onto the plane.

    Args:
        mean_projections: ``(S, r, 2)``, ``<u_r, mu_k>`` for ``r`` vectors
            (hidden weights or inputs).
        mean_norms: ``(S, 2)``.

    Returns:
        ``(S, r, 2)``.
    """
    return _safe_divide(mean_projections, rearrange(mean_norms.to(mean_projections.dtype), "s k -> s 1 k"))


def plane_network_outputs(neuron_coordinates: Tensor, output_weights: Tensor, points: Tensor) -> Tensor:
    """Evaluate the network at points ``c_1 e_1 + c_2 e_2`` of the plane ``span(mu_1, mu_2)``.

    .. math::
        f(c_1 e_1 + c_2 e_2) = \\sum_j a_j \\operatorname{relu}(c_1 \\langle w_j, e_1 \\rangle
                                                            + c_2 \\langle w_j, e_2 \\rangle)

    Args:
        neuron_coordinates: ``(S, m, 2)``, ``<w_j, e_k>`` from :func:`plane_coordinates`.
        output_weights: ``(S, m)``.
        points: ``(g, 2)``, the coordinates ``(c_1, c_2)``.

    Returns:
        ``(S, g)``.
    """
    preactivations = einsum(neuron_coordinates, points.to(neuron_coordinates.dtype), "s m k, g k -> s m g")
    return network_outputs(preactivations, output_weights)
