"""A callback that logs the split of the network into a linear and an even part.

Because ``relu(z) = (z + |z|) / 2``, every network ``f(x) = sum_j a_j relu(<w_j, x>)``
is ``<v, x> + g(x)`` with ``v = (1/2) sum_j a_j w_j`` and
``g(x) = (1/2) sum_j a_j |<w_j, x>|``. The linear part is odd, so it scores ``x``
and ``-x`` with opposite signs and cannot classify XOR clusters, whose clean label
is the same for ``x`` and ``-x``. Only the even part ``g`` can.
"""

from lightning.pytorch import LightningModule, Trainer

from probes import functional as F
from probes._base import NetworkProbe


class LinearComponent(NetworkProbe):
    """Log the size and the accuracy of the linear part ``<v, x>`` and the even part ``g(x)``.

    Scalars:

    - ``linear/share_train``, ``linear/share_test``: ``sum <v,x>^2 / sum (<v,x>^2 + g(x)^2)``
      over the training and the test inputs.
    - ``linear/acc_test``, ``even/acc_test``: clean test accuracy of ``sign(<v, x>)``
      alone and of ``sign(g(x))`` alone.
    - ``linear/norm_ratio``: ``||v|| / ||W||_F``.
    - ``linear/cos_label_sum``: ``cos(v, sum_i y_i x_i)``, the cosine with the
      direction of the linear classifier the network is close to after one step.

    Args:
        access: where the network and the data are found; ``None`` uses the
            :class:`~probes.snapshot.ProbeAccess` defaults.
        schedule: ``"every"`` or ``"log"``, see :class:`~probes.schedule.StepSchedule`.
        every: the period in steps in ``"every"`` mode.
        per_decade: points per factor of ten in steps in ``"log"`` mode.

    Raises:
        ValueError: if a schedule argument is invalid.
    """

    def measure(self, trainer: Trainer, pl_module: LightningModule, step: int, final: bool) -> None:
        snapshot = self.access.network_snapshot(trainer, pl_module)
        data = self.access.cluster_data(trainer, pl_module)
        output_weights = snapshot.output_weights

        train_linear = F.linear_part(snapshot.train_preactivations, output_weights)  # (S, n)
        train_even = F.even_part(snapshot.train_preactivations, output_weights)
        test_linear = F.linear_part(snapshot.test_preactivations, output_weights)  # (S, n_test)
        test_even = F.even_part(snapshot.test_preactivations, output_weights)

        values = {
            "linear/share_train": F.linear_share(train_linear, train_even),
            "linear/share_test": F.linear_share(test_linear, test_even),
            "linear/acc_test": F.sign_accuracy(test_linear, data.test_labels),
            "even/acc_test": F.sign_accuracy(test_even, data.test_labels),
            "linear/norm_ratio": F.linear_norm_ratio(snapshot.linear_norm, snapshot.frobenius_norm),
            "linear/cos_label_sum": F.label_sum_cosine(
                train_linear, data.train_labels, snapshot.linear_norm, data.label_sum_norm
            ),
        }
        for tag, per_seed in values.items():
            self.log_values(pl_module, tag, per_seed, step, final)
