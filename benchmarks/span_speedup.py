"""Measure what span-parametrized GD and seed ensembles save, in one invocation.

1. The median time of one GD step (``gd_step``: the gradient and the update),
   dense against span-parametrized, at the size of configs/paper_fig1_*.yaml (p = 40000, n = 200,
   m = 1000, one seed). Goal: a ratio of at least 100. The time of the whole
   training batch, with the step's metrics and logging, is printed beside it.
2. The wall time of S sequential single-seed runs against one S-seed ensemble
   run at the size of configs/base.yaml, for both modules. Goal: a ratio of at
   least 2 for the span module, which the paper-size configs use.

The variants alternate, so that a slower or faster period of a shared machine
affects both sides of each ratio.

Usage: python benchmarks/span_speedup.py [--rounds 2] [--seeds 4]
"""

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # import the project from this checkout, installed or not

from lightning_grok import DenseXORNetwork, SpanXORNetwork, XORClusterDataModule  # noqa: E402

warnings.filterwarnings("ignore")

PAPER = dict(input_dim=40000, num_train=200, num_test=200, flip_rate=0.05)
BASE = dict(input_dim=10000, num_train=50, num_test=500, flip_rate=0.1)
MODEL = dict(width=1000, init_scale=1e-15, test_schedule="every", test_every=10**9)


class StepTimer(pl.Callback):
    """Record the wall time of every training batch, one GD step each."""

    def __init__(self) -> None:
        self.durations: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.durations.append(time.perf_counter() - self._start)


def _trainer(max_steps: int, callbacks: list) -> pl.Trainer:
    return pl.Trainer(
        max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks, accelerator="cpu", devices=1,
    )


def median_step_times(model_class: type, max_steps: int) -> tuple[float, float]:
    """Fit the paper-size problem for ``max_steps`` steps; return median step times, first step left out.

    Returns:
        The median time of ``gd_step`` (gradient and update) and of the whole
        training batch (with the metrics and logging of the step).
    """
    datamodule = XORClusterDataModule(**PAPER, seed=0)
    model = model_class(input_dim=PAPER["input_dim"], lr=1e-12, seed=0, **MODEL)
    gd_durations = []
    gd_step = model.gd_step

    def timed_gd_step(batch):
        start = time.perf_counter()
        result = gd_step(batch)
        gd_durations.append(time.perf_counter() - start)
        return result

    model.gd_step = timed_gd_step
    timer = StepTimer()
    _trainer(max_steps, [timer]).fit(model, datamodule)
    return statistics.median(gd_durations[1:]), statistics.median(timer.durations[1:])


def fit_seconds(model_class: type, num_seeds: int, seed: int, max_steps: int) -> float:
    """Return the wall time of building and fitting one run at the base size."""
    start = time.perf_counter()
    datamodule = XORClusterDataModule(**BASE, seed=seed, num_seeds=num_seeds)
    model = model_class(input_dim=BASE["input_dim"], lr=3e-15, seed=seed, num_seeds=num_seeds, **MODEL)
    _trainer(max_steps, []).fit(model, datamodule)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternations of each comparison")
    parser.add_argument("--seeds", type=int, default=4, help="S, the ensemble size of comparison 2")
    parser.add_argument("--base-steps", type=int, default=200, help="GD steps per run in comparison 2")
    parser.add_argument(
        "--ensemble-modules", choices=["both", "span"], default="both",
        help="modules of comparison 2; 'span' skips the dense runs, which take minutes",
    )
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    dense_steps, span_steps = [], []
    for _ in range(args.rounds):
        dense_steps.append(median_step_times(DenseXORNetwork, max_steps=6))
        span_steps.append(median_step_times(SpanXORNetwork, max_steps=50))
        print(
            f"paper size, gd_step: dense {dense_steps[-1][0] * 1e3:.1f} ms, span {span_steps[-1][0] * 1e3:.2f} ms; "
            f"whole training batch: dense {dense_steps[-1][1] * 1e3:.1f} ms, span {span_steps[-1][1] * 1e3:.2f} ms"
        )
    step_ratio = statistics.median(d[0] for d in dense_steps) / statistics.median(s[0] for s in span_steps)
    batch_ratio = statistics.median(d[1] for d in dense_steps) / statistics.median(s[1] for s in span_steps)

    ensemble_ratios = {}
    model_classes = (SpanXORNetwork, DenseXORNetwork) if args.ensemble_modules == "both" else (SpanXORNetwork,)
    for model_class in model_classes:
        sequential, ensemble = [], []
        for _ in range(args.rounds):
            sequential.append(sum(
                fit_seconds(model_class, 1, seed, args.base_steps) for seed in range(args.seeds)
            ))
            ensemble.append(fit_seconds(model_class, args.seeds, 0, args.base_steps))
            print(
                f"base size, {model_class.__name__}: {args.seeds} sequential runs {sequential[-1]:.1f} s, "
                f"one {args.seeds}-seed ensemble {ensemble[-1]:.1f} s"
            )
        ensemble_ratios[model_class.__name__] = statistics.median(sequential) / statistics.median(ensemble)

    print(f"dense / span time per GD step (gd_step) at the paper's size: {step_ratio:.0f} (goal >= 100)")
    print(f"dense / span time per training batch, metrics and logging included: {batch_ratio:.0f}")
    for name, ratio in ensemble_ratios.items():
        print(f"{args.seeds} sequential runs / one ensemble run, {name}, base size: {ratio:.2f}")
    print("goal: >= 2 for SpanXORNetwork")


if __name__ == "__main__":
    main()
