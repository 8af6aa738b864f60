"""A hand-written PyTorch loop that does the dense full-batch GD of configs/base.yaml.

It is the baseline against which ``benchmarks/overhead.py`` measures what
Lightning, the module's logging and the probes add per GD step. The loop does
the same work as ``python -m lightning_grok fit --config configs/base.yaml``
with the probes turned off:

- the same data (``XORClusterDataModule.setup`` without a trainer, float32),
  the same ``W(0)`` and output weights (``init_weights`` with seed
  ``model.seed``, rounded to float32 as ``DenseXORNetwork`` stores them), the
  same step size and number of steps;
- every step, the loss and the accuracies ``train/acc``, ``train/acc_flipped``
  and ``train/acc_unflipped`` of ``W(t)``, from the outputs of the forward pass
  that the gradient step uses;
- ``test/acc`` and ``test/acc_noisy`` at the steps of ``model.test_schedule``,
  and all of them once more for ``W(T)`` after the last step;
- each scalar written to a TensorBoard ``SummaryWriter`` at the step it
  describes, as ``TensorBoardLogger`` does for the Lightning run.

It computes no probe quantities, prints nothing and saves no checkpoint.

Usage: python benchmarks/plain_loop.py [--config configs/base.yaml] [--log-dir DIR] [--max-steps N]
"""

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # import the project from this checkout, installed or not

from lightning_grok.data import XORClusterDataModule
from lightning_grok.functional import init_weights, logistic_loss, network_outputs
from probes.schedule import StepSchedule


@dataclass
class Problem:
    """The data, the initial weights and the schedule of one single-seed dense run.

    Attributes:
        data: the set-up data module; every tensor has a leading ``S = 1``.
        hidden_weight: ``(1, m, p)`` float32, ``W(0)``.
        output_weight: ``(1, m)`` float32, the fixed ``a_j``.
        lr: the GD step size.
        max_steps: ``T``, the number of GD steps.
        test_schedule: the steps at which the test accuracies are measured.
    """

    data: XORClusterDataModule
    hidden_weight: Tensor
    output_weight: Tensor
    lr: float
    max_steps: int
    test_schedule: StepSchedule


def read_config(path: Path) -> dict:
    """Return the parsed YAML config at ``path``."""
    return yaml.safe_load(path.read_text())


def build_problem(config: dict, max_steps: int | None = None) -> Problem:
    """Draw the data and ``W(0)`` that the config's ``DenseXORNetwork`` run starts from.

    Raises:
        ValueError: if the config requests an ensemble (``data.num_seeds`` above 1),
            which this loop does not implement.
    """
    data_settings = dict(config["data"])
    model_settings = dict(config["model"]["init_args"])
    if data_settings.get("num_seeds", 1) != 1:
        raise ValueError(f"the plain loop trains one seed, but data.num_seeds is {data_settings['num_seeds']}")

    data = XORClusterDataModule(**data_settings)
    data.setup("fit")  # no trainer: float32, as under Lightning's default precision

    generator = torch.Generator().manual_seed(model_settings.get("seed", 0))
    output_weight, hidden_weight = init_weights(
        model_settings["width"], data_settings["input_dim"], model_settings["init_scale"], generator
    )
    schedule = StepSchedule(
        model_settings.get("test_schedule", "every"),
        every=model_settings.get("test_every", 1),
        per_decade=model_settings.get("test_per_decade", 10),
    )
    return Problem(
        data=data,
        hidden_weight=hidden_weight.float()[None],  # (1, m, p)
        output_weight=output_weight.float()[None],  # (1, m)
        lr=model_settings["lr"],
        max_steps=config["trainer"]["max_steps"] if max_steps is None else max_steps,
        test_schedule=schedule,
    )


def accuracy(outputs: Tensor, labels: Tensor, keep: Tensor | None = None) -> float:
    """Return the fraction of kept points with ``f(x) > 0`` exactly where the label is positive; NaN if none is kept."""
    correct = (outputs > 0) == (labels > 0)
    if keep is not None:
        correct = correct[keep]
    return correct.float().mean().item() if correct.numel() else float("nan")


def write_metrics(
    writer: SummaryWriter | None,
    step: int,
    data: XORClusterDataModule,
    train_outputs: Tensor,
    loss: Tensor,
    test_outputs: Tensor | None,
) -> dict[str, float]:
    """Compute the logged scalars of ``W(step)`` from its outputs ``(1, N)`` and write them at ``step``."""
    labels = data.train_labels
    flipped = data.flip_mask
    values = {
        "train/loss": loss.item(),
        "train/acc": accuracy(train_outputs, labels),
        "train/acc_flipped": accuracy(train_outputs, labels, keep=flipped),
        "train/acc_unflipped": accuracy(train_outputs, labels, keep=~flipped),
    }
    if test_outputs is not None:
        values["test/acc"] = accuracy(test_outputs, data.test_labels)
        values["test/acc_noisy"] = accuracy(test_outputs, data.test_noisy_labels)
    if writer is not None:
        for tag, value in values.items():
            writer.add_scalar(tag, value, global_step=step)
    return values


def train(problem: Problem, writer: SummaryWriter | None) -> tuple[Tensor, float]:
    """Run full-batch GD from ``W(0)`` for ``max_steps`` steps, logging every step.

    Step ``t`` measures ``W(t)``: the forward pass of the gradient step gives the
    training outputs and loss, and on scheduled steps a no-grad pass gives the
    test outputs. ``W(T)`` is measured after the loop.

    Returns:
        ``W(T)`` of shape ``(1, m, p)`` and the wall time of the loop in seconds,
        from the start of step 0 to the last scalar handed to the writer.
    """
    data = problem.data
    train_inputs, train_labels, test_inputs = data.train_inputs, data.train_labels, data.test_inputs
    hidden_weight = torch.nn.Parameter(problem.hidden_weight.clone())  # (1, m, p)
    output_weight = problem.output_weight  # (1, m)
    optimizer = torch.optim.SGD([hidden_weight], lr=problem.lr, momentum=0.0, weight_decay=0.0)

    def outputs_of(inputs: Tensor) -> Tensor:
        preactivations = torch.matmul(hidden_weight, inputs.transpose(1, 2))  # (S, m, N)
        return network_outputs(preactivations, output_weight)  # (1, N)

    last_step = problem.max_steps
    start = time.perf_counter()
    for step in range(last_step):
        test_outputs = None
        if problem.test_schedule.selects(step, last_step):
            with torch.no_grad():
                test_outputs = outputs_of(test_inputs)

        train_outputs = outputs_of(train_inputs)
        loss = logistic_loss(train_outputs, train_labels)  # (1,)
        optimizer.zero_grad()
        loss.sum().backward()
        optimizer.step()

        write_metrics(writer, step, data, train_outputs.detach(), loss.detach(), test_outputs)

    with torch.no_grad():
        train_outputs = outputs_of(train_inputs)
        final_loss = logistic_loss(train_outputs, train_labels)
        write_metrics(writer, last_step, data, train_outputs, final_loss, outputs_of(test_inputs))
    return hidden_weight.detach(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/base.yaml", help="a DenseXORNetwork config")
    parser.add_argument("--log-dir", type=Path, default=None, help="TensorBoard directory; a temporary one if unset")
    parser.add_argument("--max-steps", type=int, default=None, help="GD steps; trainer.max_steps of the config if unset")
    args = parser.parse_args()

    problem = build_problem(read_config(args.config), args.max_steps)
    with tempfile.TemporaryDirectory() as temporary:
        with SummaryWriter(str(args.log_dir or temporary)) as writer:
            _, seconds = train(problem, writer)
    print(f"{problem.max_steps} GD steps in {seconds:.2f} s, {seconds / problem.max_steps * 1e3:.1f} ms per step")


if __name__ == "__main__":
    main()
