"""The network, its loss and its closed-form gradient, as pure tensor functions.

The network is ``f(x) = sum_j a_j relu(<w_j, x>)`` with ``m`` hidden neurons, no
biases and fixed output weights ``a_j``. Every function takes a leading
ensemble dimension ``S`` so that ``S`` independent networks train at once.
"""

import math

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor


def init_weights(width: int, input_dim: int, init_scale: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Draw the output weights and the initial hidden weights of one network.

    The output weights ``a_j`` are i.i.d. uniform on ``{+1/sqrt(m), -1/sqrt(m)}``
    and the hidden weights ``w_j`` are i.i.d. ``N(0, init_scale^2 I_p)``, drawn in
    that order from ``generator``. The hidden weights are drawn in float32, which
    was four times faster than float64 on a CPU (torch 2.13). That matters for
    100 members of width 1000 in dimension 40000, which draw 4e9 values. Float64 runs start from the
    same float32 values.

    Returns:
        ``(output_weights, hidden_weights)`` with shapes ``(m,)`` and ``(m, p)``,
        in float64.
    """
    signs = 2.0 * torch.randint(2, (width,), generator=generator).to(torch.float64) - 1.0
    output_weights = signs / math.sqrt(width)
    standard = torch.randn(width, input_dim, generator=generator, dtype=torch.float32)
    hidden_weights = init_scale * standard.to(torch.float64)
    return output_weights, hidden_weights


def network_outputs(preactivations: Tensor, output_weights: Tensor) -> Tensor:
    """Compute ``f(x_i) = sum_j a_j relu(z_ji)`` from preactivations ``z_ji = <w_j, x_i>``.

    Args:
        preactivations: ``(S, m, N)``.
        output_weights: ``(S, m)``.

    Returns:
        ``(S, N)``.
    """
    return einsum(output_weights, torch.relu(preactivations), "s m, s m n -> s n")


def logistic_loss(outputs: Tensor, labels: Tensor, num_points: int | None = None) -> Tensor:
    """Compute the mean logistic loss ``(1/n) sum_i log(1 + exp(-y_i f(x_i)))`` of each member.

    Args:
        outputs: ``(S, N)``, the values ``f(x_i)``.
        labels: ``(S, N)`` in ``{-1, +1}``.
        num_points: the ``n`` of the mean; ``N`` if ``None``. Under data
            parallelism, the total over all processes, so that the values of the
            processes sum to the mean over all points.

    Returns:
        ``(S,)``.
    """
    losses = F.softplus(-labels * outputs)
    if num_points is None:
        return losses.mean(dim=-1)
    return losses.sum(dim=-1) / num_points


def output_gradient(outputs: Tensor, labels: Tensor, num_points: int) -> Tensor:
    """Compute ``dL/df(x_i) = -y_i sigmoid(-y_i f(x_i)) / n`` for the mean logistic loss.

    Uses ``l'(z) = -1 / (1 + exp(z)) = -sigmoid(-z)`` for ``l(z) = log(1 + exp(-z))``.
    ``num_points`` is the ``n`` of the mean, which under data parallelism is the
    total over all processes, not the local shard size.

    Returns:
        ``(S, N)``.
    """
    return -labels * torch.sigmoid(-labels * outputs) / num_points


def preactivation_gradient(
    preactivations: Tensor, output_weights: Tensor, output_grad: Tensor, out: Tensor | None = None
) -> Tensor:
    """Compute ``G = dL/dZ`` with ``G_ji = a_j relu'(z_ji) dL/df(x_i)`` and ``relu'(0) = 0``.

    The gradient of the loss in the hidden weights is then ``dL/dW = G X``.
    Since ``relu'(z) = relu'(relu(z))``, rectified preactivations give the same ``G``.

    Args:
        preactivations: ``(S, m, N)``.
        output_weights: ``(S, m)``.
        output_grad: ``(S, N)``, from :func:`output_gradient`.
        out: an ``(S, m, N)`` tensor to write ``G`` into, which may be
            ``preactivations`` itself; a new tensor if ``None``.

    Returns:
        ``(S, m, N)``.
    """
    # G is built in place in one float tensor, the mask relu'(z) = [z > 0] first.
    # At S = 100, m = 1000 and N = 200, a new (S, m, N) tensor took longer to allocate and first
    # touch than the arithmetic written into it (benchmarks/overhead.py).
    gradient = torch.empty_like(preactivations) if out is None else out
    torch.gt(preactivations, 0, out=gradient)
    gradient.mul_(rearrange(output_weights, "s m -> s m 1"))
    return gradient.mul_(rearrange(output_grad, "s n -> s 1 n"))
