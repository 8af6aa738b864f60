"""Resuming a run from a checkpoint, and stopping a run that diverges."""

from pathlib import Path

import pytest
import torch

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from _events import read_scalars, read_step_lists
from lightning_grok import DenseXORNetwork, XORClusterDataModule
from lightning_grok.cli import main
from lightning_grok.model import DivergenceError

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--data.input_dim", "40", "--data.num_train", "9", "--data.num_test", "16", "--data.flip_rate", "0.2",
    "--model.init_args.width", "6", "--model.init_args.init_scale", "0.1", "--model.init_args.lr", "0.5",
    "--model.init_args.test_schedule", "every", "--trainer.precision", "64-true",
    "--trainer.enable_progress_bar", "false",
]


def _fit(save_dir: Path, *extra: str):
    return main([
        "fit", "--config", str(ROOT / "configs/base.yaml"), *TINY,
        "--trainer.logger.init_args.save_dir", str(save_dir),
        "--trainer.logger.init_args.version", "0",
        *extra,
    ])


def _checkpoint(save_dir: Path) -> Path:
    (checkpoint,) = (save_dir / "base" / "version_0" / "checkpoints").glob("*.ckpt")
    return checkpoint


def test_resume_matches_uninterrupted_run(tmp_path):
    whole_cli = _fit(tmp_path / "whole", "--trainer.max_steps", "6")
    _fit(tmp_path / "split", "--trainer.max_steps", "3")
    split_cli = _fit(tmp_path / "split", "--trainer.max_steps", "6", "--ckpt_path", str(_checkpoint(tmp_path / "split")))

    whole_weights = whole_cli.model.hidden_weight.detach()
    split_weights = split_cli.model.hidden_weight.detach()
    assert whole_weights.dtype == torch.float64
    assert torch.allclose(split_weights, whole_weights, rtol=1e-12, atol=0)

    # TensorBoard stores scalars in float32, so equal float64 values may differ by one float32 rounding step.
    whole = read_scalars(tmp_path / "whole" / "base" / "version_0")
    split = read_scalars(tmp_path / "split" / "base" / "version_0")
    assert set(split) == set(whole)
    for tag, values in whole.items():
        assert split[tag].keys() == values.keys(), tag
        for step, value in values.items():
            assert split[tag][step] == pytest.approx(value, rel=2**-23, abs=1e-30), (tag, step)


def test_resume_logs_no_step_twice(tmp_path):
    _fit(tmp_path, "--trainer.max_steps", "3")
    _fit(tmp_path, "--trainer.max_steps", "5", "--ckpt_path", str(_checkpoint(tmp_path)))

    steps = read_step_lists(tmp_path / "base" / "version_0")
    assert steps["train/acc"] == [0, 1, 2, 3, 4, 5]
    assert steps["alignment/pos_mu1"] == [0, 1, 2, 3, 4, 5]
    for tag, logged in steps.items():
        assert len(logged) == len(set(logged)), tag


def test_resume_with_other_data_rejected(tmp_path, capsys):
    _fit(tmp_path, "--trainer.max_steps", "2")
    checkpoint = _checkpoint(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        _fit(tmp_path, "--trainer.max_steps", "4", "--data.seed", "1", "--ckpt_path", str(checkpoint))

    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    saved = torch.load(checkpoint, weights_only=False)["XORClusterDataModule"]["fingerprint"]
    assert f"fingerprint {saved}" in message
    assert "draw data with fingerprint" in message


def test_divergence_stops_with_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _fit(
            tmp_path, "--trainer.max_steps", "5", "--trainer.precision", "32-true", "--data.mean_norm", "1000",
            "--model.init_args.init_scale", "1e30", "--model.init_args.lr", "1e38",
        )
    assert exit_info.value.code == 1
    message = capsys.readouterr().err
    assert "training diverged at step 1" in message
    assert "last finite loss was" in message
    assert "at step 0" in message
    assert "model.lr (now 1e+38)" in message


class _RaiseStepSize(Callback):
    """Multiply the step size by a huge factor after two steps, so that the next step overflows."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 2:
            trainer.optimizers[0].param_groups[0]["lr"] = 1e38


def test_divergence_keeps_last_finite_checkpoint(tmp_path):
    datamodule = XORClusterDataModule(input_dim=40, num_train=9, num_test=16, mean_norm=1000.0, seed=0)
    model = DenseXORNetwork(input_dim=40, width=6, init_scale=1e30, lr=1e30)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1)
    trainer = Trainer(
        max_steps=10, logger=False, callbacks=[checkpoints, _RaiseStepSize()],
        enable_progress_bar=False, enable_model_summary=False,
    )
    with pytest.raises(DivergenceError, match="the weights after step 3 are not finite"):
        trainer.fit(model, datamodule)

    (kept,) = tmp_path.glob("*.ckpt")
    assert kept.name == "epoch=0-step=2.ckpt"
    state = torch.load(kept, weights_only=False)["state_dict"]
    assert torch.isfinite(state["hidden_weight"]).all()
