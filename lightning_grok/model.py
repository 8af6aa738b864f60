"""Two-layer ReLU networks trained by full-batch gradient descent, as LightningModules.

:class:`XORNetwork` contains what every parametrization shares: the fixed output
weights, the metrics, the logging schedule and the step semantics. The value
logged at step ``t`` describes the weights ``W(t)`` after ``t`` GD steps, and
step 0, the initialization, is logged. A run of ``trainer.max_steps = T`` steps
logs steps ``0, ..., T``: batch ``t`` measures ``W(t)`` and then steps, and the
final weights ``W(T)`` are measured when the epoch ends.

:class:`DenseXORNetwork` stores ``W`` as an ``(S, m, p)`` parameter and steps it
with autograd and ``torch.optim.SGD``; it is the reference implementation.
"""

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn

from lightning_grok.functional import init_weights, logistic_loss, network_outputs
from lightning_grok.metrics import EnsembleAccuracy
from lightning_grok.validation import check_range
from probes.schedule import ScheduleMode, StepSchedule
from probes.snapshot import NetworkSnapshot, dense_snapshot, inner_products
from probes.stats import ensemble_summary, log_ensembles

# Tags shown on the progress bar; every tag is also logged to every logger.
_PROGRESS_BAR_TAGS = {"train/loss", "train/acc", "test/acc"}


class DivergenceError(RuntimeError):
    """Raised when the loss or the weights of a run stop being finite."""


def _format_losses(loss: Tensor) -> str:
    values = [f"{value:.6g}" for value in loss.tolist()]
    return values[0] if len(values) == 1 else "[" + ", ".join(values) + "]"


def check_model_settings(
    input_dim: int = 2,
    width: int = 1,
    init_scale: float = 0.0,
    lr: float = 1.0,
    seed: int = 0,
    num_seeds: int = 1,
    test_schedule: str = "every",
    test_every: int = 1,
    test_per_decade: int = 1,
    **other_settings: Any,
) -> None:
    """Raise ``ValueError`` naming the first model setting out of its allowed range.

    The CLI calls this before instantiating anything, so that a bad value is
    reported as a usage error; the constructor calls it too.
    """
    check_range("model.input_dim", input_dim, minimum=1, integer=True)
    check_range("model.width", width, minimum=1, integer=True)
    check_range("model.init_scale", init_scale, minimum=0.0)
    check_range("model.lr", lr, minimum=0.0, exclusive=True)
    check_range("model.seed", seed, minimum=0, integer=True)
    check_range("model.num_seeds", num_seeds, minimum=1, integer=True)
    check_range("model.test_every", test_every, minimum=1, integer=True)
    check_range("model.test_per_decade", test_per_decade, minimum=1, integer=True)
    if test_schedule not in ("every", "log"):
        raise ValueError(f"model.test_schedule must be 'every' or 'log', got {test_schedule!r}")


def check_process_count(model: "XORNetwork", world_size: int) -> None:
    """Raise ``ValueError`` if ``model`` cannot train on ``world_size`` processes.

    The CLI calls this before training so that the message is a usage error;
    :meth:`XORNetwork.setup` calls it too.
    """
    if world_size > 1 and not model.supports_data_parallel:
        raise ValueError(
            f"{type(model).__name__} supports one process only, but the trainer runs {world_size} processes "
            "(trainer.devices times trainer.num_nodes). Run it with --trainer.devices 1, "
            "or use lightning_grok.DenseXORNetwork for data-parallel training"
        )


class XORNetwork(pl.LightningModule):
    """Shared logic of ``S`` networks ``f(x) = sum_j a_j relu(<w_j, x>)`` trained by full-batch GD.

    Subclasses provide :meth:`split_outputs` and :meth:`gd_step`. A batch is the
    dict that :meth:`XORClusterDataModule.full_batch` returns. Under data
    parallelism it contains this process's shard of the points, the loss that
    ``gd_step`` returns is the mean over the points of all processes, and the
    accuracy counts are summed over processes. A subclass that cannot train on
    shards sets :attr:`supports_data_parallel` to ``False``.

    Args:
        input_dim: the input dimension ``p``; linked from ``data.input_dim`` by the CLI.
        width: the number of hidden neurons ``m``.
        init_scale: ``omega_init``, the standard deviation of each initial hidden weight.
        lr: the GD step size ``alpha``.
        seed: the model seed of ensemble member 0; member ``s`` uses ``seed + s``.
        num_seeds: ``S``; linked from ``data.num_seeds`` by the CLI.
        test_schedule: ``"every"`` to measure test accuracy every ``test_every``
            steps, ``"log"`` for ``test_per_decade`` log-spaced steps per factor of ten.
            Steps 0, 1 and the last step are always measured.
        test_every: the period of the ``"every"`` schedule, in steps.
        test_per_decade: the density of the ``"log"`` schedule.
        log_per_seed: whether to log every ensemble member's value as
            ``<tag>_seed<s>`` beside the median and quantiles, for the module's
            metrics and for the probes.
    """

    supports_data_parallel = True
    """``True`` if the module trains correctly on several processes that each get a shard of the points."""

    def __init__(
        self,
        input_dim: int,
        width: int = 1000,
        init_scale: float = 1e-15,
        lr: float = 3e-15,
        seed: int = 0,
        num_seeds: int = 1,
        test_schedule: ScheduleMode = "every",
        test_every: int = 1,
        test_per_decade: int = 10,
        log_per_seed: bool = False,
    ) -> None:
        super().__init__()
        check_model_settings(
            input_dim=input_dim, width=width, init_scale=init_scale, lr=lr, seed=seed, num_seeds=num_seeds,
            test_schedule=test_schedule, test_every=test_every, test_per_decade=test_per_decade,
        )
        self.test_schedule = StepSchedule(test_schedule, every=test_every, per_decade=test_per_decade)
        self.save_hyperparameters()

        self.input_dim = input_dim
        self.width = width
        self.init_scale = init_scale
        self.lr = lr
        self.seed = seed
        self.num_seeds = num_seeds
        self.log_per_seed = log_per_seed
        self._last_logged_step: int | None = None
        self._last_finite_loss: tuple[int, Tensor] | None = None

        # init_weights draws the output weights before the hidden weights, so a draw
        # with input_dim 0 yields each member's output weights without the (m, p) draw.
        output_weights = [init_weights(width, 0, init_scale, self._member_generator(member))[0]
                          for member in range(num_seeds)]
        self.register_buffer("output_weight", torch.stack(output_weights).float())  # (S, m)

        self.accuracy = nn.ModuleDict({
            name.replace("/", "_"): EnsembleAccuracy(num_seeds)
            for name in ("train/acc", "train/acc_flipped", "train/acc_unflipped", "test/acc", "test/acc_noisy")
        })

    def initial_hidden_weights(self, member: int) -> Tensor:
        """Draw ``W(0)`` of ensemble member ``member`` again from its seed ``seed + member``.

        Each call redraws, so that no parametrization has to keep all ``S`` members'
        ``(m, p)`` draws in memory at once.

        Returns:
            ``(m, p)`` float64, the same values on every call.
        """
        _, hidden_weights = init_weights(self.width, self.input_dim, self.init_scale, self._member_generator(member))
        return hidden_weights

    def _member_generator(self, member: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + member)

    # ---- what a parametrization provides -------------------------------------------------

    def split_outputs(self, batch: dict[str, Tensor], split: str) -> Tensor:
        """Return the outputs ``f(x)`` of shape ``(S, N)`` on the ``"train"`` or ``"test"`` inputs of ``batch``."""
        raise NotImplementedError

    def gd_step(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Take one GD step on the training points of ``batch``.

        Returns:
            The training outputs ``(S, n)`` and the per-member loss ``(S,)`` of the
            weights before the step, detached.
        """
        raise NotImplementedError

    # ---- training ------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        check_process_count(self, self.trainer.world_size)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        step = self.global_step  # the weights are W(step) until gd_step returns
        # A run resumed from a checkpoint starts at a step that was logged before it stopped.
        measure = step != self._last_logged_step
        test_outputs = None
        if measure and self.test_schedule.selects(step, self._last_step()):
            with torch.no_grad():
                test_outputs = self.split_outputs(batch, "test")

        train_outputs, loss = self.gd_step(batch)
        self._check_finite(step, loss)
        if measure:
            self._log_measurements(batch, step, train_outputs, loss, test_outputs, on_step=True)

    def _check_finite(self, step: int, loss: Tensor) -> None:
        """Raise :class:`DivergenceError` if the loss of ``W(step)`` is not finite for some member."""
        if bool(torch.isfinite(loss).all()):
            self._last_finite_loss = (step, loss)
            return
        if self._last_finite_loss is None:
            last = "no earlier step had a finite loss"
        else:
            last_step, last_loss = self._last_finite_loss
            last = f"the last finite loss was {_format_losses(last_loss)} at step {last_step}"
        raise DivergenceError(
            f"training diverged at step {step}: the training loss is {_format_losses(loss)}, and {last}. "
            f"Lower the step size model.lr (now {self.lr:g}) or the initialization scale "
            f"model.init_scale (now {self.init_scale:g})."
        )

    def on_train_epoch_end(self) -> None:
        # The last GD step has no batch after it, so W(T) is measured here.
        if self.global_step >= self._last_step() and self._last_logged_step != self.global_step:
            self._measure_and_log(self.trainer.datamodule.full_batch(), on_step=False)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._measure_and_log(batch, on_step=False)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._measure_and_log(batch, on_step=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Raising here stops Lightning before it writes the file, so the last
        # checkpoint on disk keeps finite weights.
        if not all(bool(torch.isfinite(parameter).all()) for parameter in self.parameters()):
            raise DivergenceError(
                f"training diverged: the weights after step {self.global_step} are not finite, so no checkpoint "
                f"was written for that step. Lower the step size model.lr (now {self.lr:g})."
            )
        checkpoint["last_logged_step"] = self._last_logged_step

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A resumed run continues after the last logged step instead of logging it twice.
        self._last_logged_step = checkpoint.get("last_logged_step")

    def configure_model(self) -> None:
        # Lightning restores a checkpoint before it converts the module to the
        # precision's dtype, so a float64 checkpoint would be rounded through float32
        # parameters. This hook runs before the restore, with the precision's dtype
        # (float64 under "64-true") as the default dtype.
        dtype = torch.get_default_dtype()
        if self.output_weight.dtype != dtype:
            self.to(dtype)

    def _last_step(self) -> int:
        return int(self.trainer.max_steps)

    # ---- measurement ---------------------------------------------------------------------

    @torch.no_grad()
    def _measure_and_log(self, batch: dict[str, Tensor], on_step: bool) -> None:
        train_outputs = self.split_outputs(batch, "train")
        loss = self._sum_over_processes(self._loss_share(train_outputs, batch["train_labels"]))
        test_outputs = self.split_outputs(batch, "test")
        self._log_measurements(batch, self.global_step, train_outputs, loss, test_outputs, on_step=on_step)

    @torch.no_grad()
    def _log_measurements(
        self,
        batch: dict[str, Tensor],
        step: int,
        train_outputs: Tensor,
        train_loss: Tensor,
        test_outputs: Tensor | None,
        on_step: bool,
    ) -> None:
        """Log the loss and accuracies of ``W(step)`` from its outputs ``(S, N)``."""
        labels = batch["train_labels"]
        flipped = batch["flip_mask"].bool()
        values = {
            "train/loss": train_loss,
            "train/acc": self._accuracy("train/acc", train_outputs, labels),
            "train/acc_flipped": self._accuracy("train/acc_flipped", train_outputs, labels, keep=flipped),
            "train/acc_unflipped": self._accuracy("train/acc_unflipped", train_outputs, labels, keep=~flipped),
        }
        if test_outputs is not None:
            values["test/acc"] = self._accuracy("test/acc", test_outputs, batch["test_labels"])
            values["test/acc_noisy"] = self._accuracy("test/acc_noisy", test_outputs, batch["test_noisy_labels"])

        if self.trainer.state.fn == TrainerFn.FITTING:
            self._last_logged_step = step
            log_ensembles(self, values, step=step, prog_bar=_PROGRESS_BAR_TAGS, on_step=on_step, on_epoch=not on_step)
        else:
            # validate and test: Lightning logs the values once, at the end of the loop
            for tag, per_member in values.items():
                for name, value in ensemble_summary(tag, per_member).items():
                    self.log(name, value, on_step=False, on_epoch=True, batch_size=1)

    def _accuracy(self, tag: str, outputs: Tensor, labels: Tensor, keep: Tensor | None = None) -> Tensor:
        """Return the per-member accuracy ``(S,)`` over all processes; NaN for a member with no kept point."""
        metric = self.accuracy[tag.replace("/", "_")]
        metric.update(outputs, labels, keep)
        accuracy = metric.compute().reshape(outputs.shape[0])  # torchmetrics squeezes S = 1 to a scalar
        metric.reset()
        return accuracy

    # ---- data parallelism ----------------------------------------------------------------

    def _loss_share(self, outputs: Tensor, labels: Tensor) -> Tensor:
        """Return this process's share ``(S,)`` of the mean logistic loss over the points of all processes.

        The share is the sum of the losses of this process's points divided by
        the number of points of all processes, so the shares sum to the mean. On
        one process it is the mean itself.
        """
        if self.trainer.world_size == 1:
            return logistic_loss(outputs, labels)
        local_count = torch.tensor(float(labels.shape[-1]), dtype=torch.float64, device=outputs.device)
        total_count = int(self._sum_over_processes(local_count).item())
        return logistic_loss(outputs, labels, num_points=total_count)

    def _sum_over_processes(self, values: Tensor) -> Tensor:
        """Return the sum of ``values`` over all processes, detached; ``values`` itself on one process."""
        if self.trainer.world_size == 1:
            return values
        # The strategy reduces in place, so it gets a copy.
        return self.trainer.strategy.reduce(values.detach().clone(), reduce_op="sum")


class DenseXORNetwork(XORNetwork):
    """The reference parametrization: ``W`` is an ``(S, m, p)`` parameter stepped by ``torch.optim.SGD``.

    Plain full-batch GD: no momentum, no weight decay, constant step size ``lr``,
    gradients from autograd through the mean logistic loss of each member.
    """

    def __init__(self, input_dim: int, **kwargs: Any) -> None:
        super().__init__(input_dim, **kwargs)
        self.automatic_optimization = False
        initial = [self.initial_hidden_weights(member).float() for member in range(self.num_seeds)]
        self.hidden_weight = nn.Parameter(torch.stack(initial))  # (S, m, p)
        self._snapshot: tuple[int, NetworkSnapshot] | None = None  # the last probe snapshot and its step

    def forward(self, inputs: Tensor) -> Tensor:
        """Return the network outputs ``f(x)`` of shape ``(S, N)`` for inputs ``(S, N, p)``."""
        preactivations = inner_products(self.hidden_weight, inputs)  # (S, m, N)
        return network_outputs(preactivations, self.output_weight)

    def split_outputs(self, batch: dict[str, Tensor], split: str) -> Tensor:
        if split == "test" and self._snapshot is not None and self._snapshot[0] == self.global_step:
            # The probes measured these weights already: reuse their pass over the test set,
            # restricted to this process's test points under data parallelism.
            preactivations = self._snapshot[1].test_preactivations
            if "test_index" in batch:
                preactivations = preactivations[..., batch["test_index"].to(preactivations.device)]
            return network_outputs(preactivations, self.output_weight)
        return self(batch[f"{split}_inputs"])

    @torch.no_grad()
    def probe_snapshot(self) -> NetworkSnapshot:
        """Return the :class:`~probes.snapshot.NetworkSnapshot` the probes read, for the current weights.

        Probes measure a step before the module logs its test metrics for it, so the
        module keeps the snapshot and takes its test outputs from it.
        """
        data = self.trainer.datamodule
        snapshot = dense_snapshot(
            self.hidden_weight,
            self.output_weight,
            data.cluster_means.to(self.hidden_weight),
            data.train_inputs.to(self.hidden_weight),
            data.test_inputs.to(self.hidden_weight),
        )
        self._snapshot = (self.global_step, snapshot)
        return snapshot

    def on_train_end(self) -> None:
        self._snapshot = None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._snapshot = None

    def gd_step(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        optimizer = self.optimizers()
        outputs = self(batch["train_inputs"])
        loss_share = self._loss_share(outputs, batch["train_labels"])  # (S,)

        # Members are independent, so the sum of their losses gives each member its own gradient.
        # Under data parallelism DistributedDataParallel averages the gradients of the
        # processes during manual_backward, so each process scales its share by the
        # number of processes for the average to be the gradient of the mean loss.
        optimizer.zero_grad()
        self.manual_backward(loss_share.sum() * self.trainer.world_size)
        optimizer.step()
        return outputs.detach(), self._sum_over_processes(loss_share.detach())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([self.hidden_weight], lr=self.lr, momentum=0.0, weight_decay=0.0)
