"""Data-parallel full-batch GD: two DDP processes on the CPU follow the single-process trajectory.

Lightning's ddp strategy starts the second process by running the same command
line again, so the two-process run goes through ``python -m lightning_grok`` in a
subprocess, with the gloo rendezvous on the loopback address.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _events import read_scalars, read_step_lists
from lightning_grok import DenseXORNetwork, SpanXORNetwork
from lightning_grok.cli import main
from lightning_grok.model import check_process_count

ROOT = Path(__file__).resolve().parents[1]

# An odd number of training points, so the two shards differ in size (5 and 4)
# and the loss must be divided by the total n, not by the shard size.
TINY = [
    "--data.input_dim", "40", "--data.num_train", "9", "--data.num_test", "16",
    "--model.init_args.width", "6", "--model.init_args.init_scale", "0.1", "--model.init_args.lr", "0.5",
    "--trainer.precision", "64-true", "--trainer.max_steps", "5",
]
TWO_PROCESSES = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]


def _fit_args(save_dir: Path, *extra: str) -> list[str]:
    # base.yaml turns on every probe, so the probes run on two processes too.
    return [
        "fit", "--config", str(ROOT / "configs/base.yaml"), *TINY,
        "--trainer.logger.init_args.save_dir", str(save_dir),
        "--trainer.default_root_dir", str(save_dir),
        "--trainer.enable_progress_bar", "false",
        *extra,
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_two_processes(save_dir: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    return subprocess.run(
        [sys.executable, "-m", "lightning_grok", *_fit_args(save_dir, *TWO_PROCESSES)],
        cwd=save_dir, env=env, capture_output=True, text=True, timeout=300,
    )


def _run_directory(save_dir: Path) -> Path:
    (run,) = (save_dir / "base").iterdir()
    return run


def _final_hidden_weight(run: Path) -> torch.Tensor:
    (checkpoint,) = (run / "checkpoints").glob("*.ckpt")
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]["hidden_weight"]


def _initial_hidden_weight() -> torch.Tensor:
    # The model seed of configs/base.yaml, which the runs keep.
    model = DenseXORNetwork(input_dim=40, width=6, init_scale=0.1, lr=0.5, seed=5)
    return model.hidden_weight.detach().double()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Fit the same settings on one process (in this process) and on two DDP processes."""
    one_dir = tmp_path_factory.mktemp("one_process")
    main(_fit_args(one_dir))

    two_dir = tmp_path_factory.mktemp("two_processes")
    result = _run_two_processes(two_dir)
    assert result.returncode == 0, result.stderr[-4000:]
    return {"one": _run_directory(one_dir), "two": _run_directory(two_dir)}


def test_ddp_weights_match_one_process(runs):
    one = _final_hidden_weight(runs["one"])
    two = _final_hidden_weight(runs["two"])
    assert one.dtype == two.dtype == torch.float64
    assert not torch.equal(one, _initial_hidden_weight())  # the run moved the weights
    torch.testing.assert_close(two, one, rtol=1e-12, atol=0.0)


def test_ddp_scalars_match_one_process(runs):
    one = read_scalars(runs["one"])
    two = read_scalars(runs["two"])
    assert set(two) == set(one)
    for tag in ("train/loss", "train/acc", "test/acc", "alignment/pos_mu1", "margins/flipped_min"):
        assert tag in one
    for tag, values in one.items():
        assert set(two[tag]) == set(values), tag
        for step, value in values.items():
            assert two[tag][step] == pytest.approx(value, rel=2**-23, abs=1e-30), f"{tag} at step {step}"


def test_ddp_logs_each_step_once(runs):
    step_lists = read_step_lists(runs["two"])
    assert step_lists["train/loss"] == [0, 1, 2, 3, 4, 5]
    for tag, steps in step_lists.items():
        assert len(steps) == len(set(steps)), f"{tag} logged twice at some step: {steps}"


def test_span_rejected_on_two_processes(tmp_path, capsys):
    args = _fit_args(tmp_path, "--model", "lightning_grok.SpanXORNetwork", *TWO_PROCESSES)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "SpanXORNetwork supports one process only" in message
    assert "--trainer.devices 1" in message
    assert not (tmp_path / "base").exists()  # stopped before the run directory was written


def test_process_count_check():
    span = SpanXORNetwork(input_dim=40, width=6)
    dense = DenseXORNetwork(input_dim=40, width=6)
    with pytest.raises(ValueError, match="supports one process only"):
        check_process_count(span, world_size=2)
    check_process_count(span, world_size=1)
    check_process_count(dense, world_size=2)
