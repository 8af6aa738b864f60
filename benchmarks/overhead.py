"""Measure the per-step overhead of the Lightning run and how close a span step gets to the matmul limit.

Prints three figures, all measured in this one invocation:

1. The wall time per GD step of ``fit`` on configs/base.yaml with no callbacks,
   over that of the hand-written loop of ``benchmarks/plain_loop.py``, which
   does the same GD, the same logged metrics and the same test schedule.
   Goal: at most 1.10.
2. The same with the probes of configs/base.yaml. The plain loop still
   computes no probe quantity. Goal: at most 1.25.
3. The time of one ``SpanXORNetwork.gd_step`` at the size of
   configs/paper_fig1_*.yaml (p = 40000, n = 200, m = 1000, S = 100), over the
   time its floating-point operations take at the throughput of a large
   float32 matmul measured here. Goal: at most 2.

For 1 and 2, each round runs the plain loop and both ``fit`` variants in
process, in an order that reverses from round to round, so that a slower or
faster period of a shared machine reaches all of them. ``fit`` is built by the
project's LightningCLI from the config, with the progress bar and checkpointing
turned off because the plain loop has neither, and logs to a TensorBoardLogger
in a temporary directory. The time per step is the wall time from the start of
step 0 to the end of the last measurement, ``W(T)``, divided by ``T``; the
set-up before it (parsing, data, ``W(0)``) is not counted. The first round also
checks that both runs end at the same ``W(T)`` and log the same values.

For 3, the step runs on synthetic ``C``, ``K`` and ``Z(0)`` with the shapes of
``configs/paper_fig1_*.yaml``, because computing the real ``K`` and ``Z(0)`` for 100 seeds takes
minutes and does not change what a step computes.

Usage: python benchmarks/overhead.py [--rounds 3] [--max-steps 200] [--span-seeds 100]
"""

import argparse
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # import the project and benchmarks.plain_loop from this checkout

from benchmarks.plain_loop import build_problem, read_config, train  # noqa: E402
from lightning_grok import SpanXORNetwork, XORClusterDataModule  # noqa: E402
from lightning_grok.cli import TRAINER_DEFAULTS, GrokCLI  # noqa: E402
from lightning_grok.model import XORNetwork  # noqa: E402
from lightning_grok.span import SpanProducts  # noqa: E402

warnings.filterwarnings("ignore", module="lightning")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")

BASE_CONFIG = ROOT / "configs/base.yaml"
PAPER_SIZE = dict(input_dim=40000, num_train=200, width=1000)
MATMUL_SIZE = 4096
GOALS = {"probes off": 1.10, "base probes": 1.25, "span step": 2.0}


class LoopClock(Callback):
    """Record when the first training batch starts and when training ends.

    One instance goes first in the trainer's callbacks and one last, so that the
    interval between them covers every hook of every step.
    """

    def __init__(self) -> None:
        self.started: float | None = None
        self.ended: float | None = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.ended = time.perf_counter()


# ---- 1 and 2: fit against the plain loop ---------------------------------------------------


def time_plain(max_steps: int, log_dir: str) -> tuple[float, Tensor]:
    """Run the plain loop on configs/base.yaml; return seconds per step and ``W(T)``."""
    problem = build_problem(read_config(BASE_CONFIG), max_steps)
    with SummaryWriter(log_dir) as writer:
        weights, seconds = train(problem, writer)
    return seconds / max_steps, weights


def time_fit(max_steps: int, log_dir: str, probes: bool) -> tuple[float, Tensor]:
    """Fit configs/base.yaml, with or without its callbacks; return seconds per step and ``W(T)``."""
    args = [
        "--config", str(BASE_CONFIG),
        "--trainer.max_steps", str(max_steps),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_checkpointing", "false",
        "--trainer.logger.init_args.save_dir", log_dir,
        "--trainer.logger.init_args.name", "fit",
        "--trainer.logger.init_args.version", "0",
    ]
    if not probes:
        args += ["--trainer.callbacks", "[]"]
    cli = GrokCLI(
        XORNetwork, XORClusterDataModule, subclass_mode_model=True, trainer_defaults=TRAINER_DEFAULTS,
        args=args, run=False, save_config_kwargs={"overwrite": True},
    )
    first, last = LoopClock(), LoopClock()
    cli.trainer.callbacks.insert(0, first)
    cli.trainer.callbacks.append(last)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return (last.ended - first.started) / max_steps, cli.model.hidden_weight.detach().clone()


def compare_runs(plain_weights: Tensor, fit_weights: Tensor, plain_dir: str, fit_dir: str) -> None:
    """Print how far apart the two runs end and whether they logged the same scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    difference = (plain_weights - fit_weights).abs().max().item()
    scale = fit_weights.abs().max().item()
    print(f"W(T): plain loop and fit equal bit for bit: {torch.equal(plain_weights, fit_weights)}; "
          f"max abs difference {difference:.3g} (max abs weight {scale:.3g})")

    scalars = {}
    for name, directory in (("plain", plain_dir), ("fit", fit_dir)):
        accumulator = EventAccumulator(directory, size_guidance={"scalars": 0})
        accumulator.Reload()
        scalars[name] = {
            tag: {event.step: event.value for event in accumulator.Scalars(tag)}
            for tag in accumulator.Tags()["scalars"]
            if tag.startswith(("train/", "test/"))
        }
    plain, fit = scalars["plain"], scalars["fit"]
    same_steps = plain.keys() == fit.keys() and all(plain[tag].keys() == fit[tag].keys() for tag in plain)
    largest = max(
        (abs(value - fit[tag][step]) for tag in plain if tag in fit for step, value in plain[tag].items()
         if step in fit[tag] and not (math.isnan(value) and math.isnan(fit[tag][step]))),
        default=float("nan"),
    )
    logged = sum(len(steps) for steps in plain.values())
    print(f"logged scalars: same tags and steps: {same_steps} ({logged} values); max abs difference {largest:.3g}")


def compare_with_fit(rounds: int, max_steps: int) -> dict[str, list[float]]:
    """Time the plain loop and both fit variants ``rounds`` times; return seconds per step by variant."""
    times: dict[str, list[float]] = {"plain": [], "probes off": [], "base probes": []}
    order = list(times)
    for round_index in range(rounds):
        with tempfile.TemporaryDirectory() as log_dir:
            weights = {}
            for variant in order if round_index % 2 == 0 else order[::-1]:
                directory = str(Path(log_dir) / variant.replace(" ", "_"))
                if variant == "plain":
                    seconds, weights[variant] = time_plain(max_steps, directory)
                else:
                    seconds, weights[variant] = time_fit(max_steps, directory, probes=variant == "base probes")
                times[variant].append(seconds)
            if round_index == 0:
                compare_runs(
                    weights["plain"], weights["probes off"], str(Path(log_dir) / "plain"),
                    str(Path(log_dir) / "probes_off" / "fit" / "version_0"),
                )
        plain = times["plain"][-1]
        print(
            f"round {round_index}: ms per step: plain {plain * 1e3:.1f}, "
            f"fit without callbacks {times['probes off'][-1] * 1e3:.1f} ({times['probes off'][-1] / plain:.3f}x), "
            f"fit with base probes {times['base probes'][-1] * 1e3:.1f} ({times['base probes'][-1] / plain:.3f}x)",
            flush=True,
        )
    return times


# ---- 3: a span step against the matmul limit -----------------------------------------------


def matmul_throughput(size: int, repeats: int) -> float:
    """Return the best float32 throughput of a ``size x size`` matmul over ``repeats`` runs, in flop/s."""
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator)
    right = torch.randn(size, size, generator=generator)
    product = torch.empty(size, size)
    torch.mm(left, right, out=product)  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(left, right, out=product)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def span_step_flops(num_seeds: int, width: int, num_train: int) -> tuple[int, int]:
    """Count the floating-point operations of one ``SpanXORNetwork.gd_step``.

    Returns:
        ``(matmul, total)``. ``matmul`` is ``Z = Z(0) + C K``: ``2 S m n^2`` for the
        product. ``total`` adds one operation per element for each elementwise
        pass over an ``(S, m, n)`` tensor: the ``+ Z(0)``; ``relu`` and the
        weighted sum over neurons (3) for the outputs; ``z > 0``, its cast and
        the two products of ``G_ji = a_j relu'(z_ji) dL/df(x_i)`` (4); the SGD
        update ``C <- C - lr G`` (2). Operations on ``(S, n)`` tensors (loss,
        ``dL/df``) are left out: they are ``m`` times fewer.
    """
    elements = num_seeds * width * num_train
    matmul = 2 * elements * num_train
    return matmul, matmul + (1 + 3 + 4 + 2) * elements


def span_module(num_seeds: int, seed: int = 0) -> tuple[SpanXORNetwork, dict[str, Tensor]]:
    """Build a ``SpanXORNetwork`` at the size of ``configs/paper_fig1_*.yaml`` whose ``gd_step`` runs on synthetic products.

    ``K`` is a symmetric matrix with the diagonal of ``||x_i||^2 = p + ||mu||^2``
    and off-diagonal entries of the size of ``<x_i, x_k>`` for Gaussian inputs,
    and ``Z(0)`` has entries of the size of ``<w_j(0), x_i>`` at
    ``init_scale = 1e-15``, so that no value is subnormal. The module gets its
    optimizer directly, since it has no trainer.
    """
    p, n, m = PAPER_SIZE["input_dim"], PAPER_SIZE["num_train"], PAPER_SIZE["width"]
    generator = torch.Generator().manual_seed(seed)
    module = SpanXORNetwork(input_dim=p, width=m, init_scale=1e-15, lr=1e-12, seed=seed, num_seeds=num_seeds)

    noise = torch.randn(num_seeds, n, n, generator=generator) * math.sqrt(p)
    gram = (noise + noise.transpose(1, 2)) / math.sqrt(2) + torch.diag_embed(torch.full((num_seeds, n), 1.3 * p))
    initial = torch.randn(num_seeds, m, n, generator=generator) * 1e-15 * math.sqrt(1.3 * p)
    empty = torch.empty(0)
    module._products = SpanProducts(
        train_gram=gram, test_gram=empty, train_mean_products=empty, input_norms=empty,
        initial_train_preactivations=initial, initial_test_preactivations=empty,
        initial_mean_projections=empty, initial_neuron_norms=empty, initial_linear_norm=empty,
    )
    module.coefficients = nn.Parameter(torch.zeros(num_seeds, m, n))
    module._products_key = (module.coefficients.dtype, module.coefficients.device)
    optimizer = module.configure_optimizers()
    module.optimizers = lambda: optimizer  # what Lightning returns inside fit, without a trainer
    labels = torch.where(torch.rand(num_seeds, n, generator=generator) < 0.5, -1.0, 1.0)
    return module, {"train_labels": labels}


def time_span_steps(module: SpanXORNetwork, batch: dict[str, Tensor], repeats: int) -> float:
    """Return the median wall time of ``repeats`` span GD steps."""
    durations = []
    for _ in range(repeats):
        start = time.perf_counter()
        module.gd_step(batch)
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


# ---- report --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the plain loop and both fit variants")
    parser.add_argument("--max-steps", type=int, default=200, help="GD steps of each base run")
    parser.add_argument("--span-seeds", type=int, default=100, help="S of the span step")
    parser.add_argument("--span-rounds", type=int, default=5, help="rounds of matmuls and span steps")
    parser.add_argument("--span-steps", type=int, default=3, help="timed span steps per round")
    parser.add_argument("--matmuls", type=int, default=2, help="timed matmuls per round")
    parser.add_argument("--skip-fit", action="store_true", help="measure only the span step (figure 3)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.skip_fit:
        report_fit_ratios(args.rounds, args.max_steps)
    report_span_step(args.span_seeds, args.span_rounds, args.span_steps, args.matmuls)


def report_fit_ratios(rounds: int, max_steps: int) -> None:
    """Print figures 1 and 2."""
    times = compare_with_fit(rounds, max_steps)
    plain = times["plain"]
    ratios = {}
    for variant in ("probes off", "base probes"):
        per_round = [fit / baseline for fit, baseline in zip(times[variant], plain)]
        ratios[variant] = statistics.median(per_round)
        print(
            f"fit ({variant}) / plain loop, wall time per step: median {ratios[variant]:.3f} "
            f"(rounds {', '.join(f'{ratio:.3f}' for ratio in per_round)}; "
            f"ratio of medians {statistics.median(times[variant]) / statistics.median(plain):.3f}) "
            f"goal <= {GOALS[variant]}"
        )


def report_span_step(num_seeds: int, rounds: int, steps_per_round: int, matmuls_per_round: int) -> None:
    """Print figure 3, from rounds that each time the matmul and then a few span steps."""
    module, batch = span_module(num_seeds)
    for _ in range(2):
        module.gd_step(batch)  # warm-up: allocates the workspace

    matmul_flops, total_flops = span_step_flops(num_seeds, PAPER_SIZE["width"], PAPER_SIZE["num_train"])
    ratios, matmul_only_ratios = [], []
    for round_index in range(rounds):
        throughput = matmul_throughput(MATMUL_SIZE, matmuls_per_round)
        step = time_span_steps(module, batch, steps_per_round)
        ratios.append(step / (total_flops / throughput))
        matmul_only_ratios.append(step / (matmul_flops / throughput))
        print(
            f"round {round_index}: float32 {MATMUL_SIZE}x{MATMUL_SIZE} matmul {throughput / 1e9:.1f} Gflop/s "
            f"(best of {matmuls_per_round}); span gd_step {step * 1e3:.1f} ms (median of {steps_per_round}); "
            f"ratio {ratios[-1]:.2f}",
            flush=True,
        )
    print(
        f"span gd_step at S={num_seeds} m={PAPER_SIZE['width']} n={PAPER_SIZE['num_train']}: "
        f"{matmul_flops / 1e9:.2f} Gflop in the C K product, {total_flops / 1e9:.2f} Gflop in all"
    )
    print(
        f"span step time / (flop count / matmul throughput): median {statistics.median(ratios):.2f} "
        f"counting all flop (rounds {', '.join(f'{ratio:.2f}' for ratio in ratios)}), "
        f"{statistics.median(matmul_only_ratios):.2f} counting the C K product only; goal <= {GOALS['span step']}"
    )


if __name__ == "__main__":
    main()
