"""Measure the wall-time cost of the probes on the base configuration.

Runs ``python -m lightning_grok fit --config configs/base.yaml`` with the
probes of the config and with no callbacks, alternating, in fresh processes,
and prints the ratio of the median wall times (goal: at most 1.25).

Usage: python benchmarks/probe_overhead.py [--repeats 3] [--max-steps 200]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def time_fit(extra_args: list[str], log_dir: str) -> float:
    command = [
        sys.executable, "-m", "lightning_grok", "fit", "--config", str(ROOT / "configs/base.yaml"),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false",
        "--trainer.logger.init_args.save_dir", log_dir, *extra_args,
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant")
    parser.add_argument("--max-steps", type=int, default=200, help="GD steps per run")
    args = parser.parse_args()

    steps = ["--trainer.max_steps", str(args.max_steps)]
    with_probes, without_probes = [], []
    with tempfile.TemporaryDirectory() as log_dir:
        for repeat in range(args.repeats):
            with_probes.append(time_fit(steps, log_dir))
            without_probes.append(time_fit([*steps, "--trainer.callbacks", "[]"], log_dir))
            print(f"repeat {repeat}: with probes {with_probes[-1]:.1f} s, without {without_probes[-1]:.1f} s")

    ratio = statistics.median(with_probes) / statistics.median(without_probes)
    print(f"median wall time with probes / without: {ratio:.3f} (goal <= 1.25)")


if __name__ == "__main__":
    main()
