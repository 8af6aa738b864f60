import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _events import read_scalars
from lightning_grok.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--data.input_dim", "40", "--data.num_train", "8", "--data.num_test", "16",
    "--model.init_args.width", "6",
]
CORE_TAGS = {"train/loss", "train/acc", "train/acc_flipped", "train/acc_unflipped", "test/acc", "test/acc_noisy"}


def _fit_args(tmp_path, *extra):
    return [
        "fit", "--config", str(ROOT / "configs/base.yaml"), *TINY,
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
        *extra,
    ]


def test_fit_writes_tensorboard_run(tmp_path):
    schedule = ["--model.init_args.test_schedule", "every", "--model.init_args.test_every", "5"]
    main(_fit_args(tmp_path, "--trainer.max_steps", "3", *schedule))
    (run,) = (tmp_path / "runs" / "base").iterdir()
    scalars = read_scalars(run)
    assert CORE_TAGS <= set(scalars)
    assert sorted(scalars["train/acc"]) == [0, 1, 2, 3]
    assert sorted(scalars["test/acc"]) == [0, 1, 3]  # every 5 steps, and steps 0, 1 and the last
    assert (run / "checkpoints").is_dir()


def test_input_dim_linked_into_model(tmp_path):
    cli = main(_fit_args(tmp_path, "--trainer.max_steps", "1"))
    assert cli.model.input_dim == 40
    assert cli.model.hidden_weight.shape == (1, 6, 40)


def test_fit_with_different_data_and_model_seeds(tmp_path):
    cli = main(_fit_args(tmp_path, "--trainer.max_steps", "1", "--data.seed", "1", "--model.init_args.seed", "2"))
    assert cli.datamodule.seed == 1
    assert cli.model.seed == 2


def test_print_config_shows_overrides(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(_fit_args(tmp_path, "--data.flip_rate", "0.2", "--print_config"))
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["data"]["flip_rate"] == 0.2
    assert "input_dim" not in config["model"]["init_args"]  # linked, not repeated


def test_validate_on_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # with no logger, LightningCLI saves its config in the working directory
    main(_fit_args(tmp_path, "--trainer.max_steps", "2"))
    (checkpoint,) = (tmp_path / "runs").rglob("*.ckpt")
    cli = main([
        "validate", "--config", str(ROOT / "configs/base.yaml"), *TINY,
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--ckpt_path", str(checkpoint),
    ])
    metrics = cli.trainer.callback_metrics
    assert {"test/acc", "train/acc"} <= set(metrics)
    assert 0.0 <= float(metrics["test/acc"]) <= 1.0


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (["--data.flip_rate", "0.7"], "data.flip_rate must be in [0, 0.5), got 0.7"),
        (["--data.input_dim", "1"], "data.input_dim must be >= 2, got 1"),
        (["--model.init_args.test_schedule", "linear"], "Expected a typing.Literal['every', 'log']. Got value: linear"),
        (["--data.num_train", "0"], "data.num_train must be >= 1, got 0"),
        (["--data.mean_norm=-2"], "data.mean_norm must be >= 0.0, got -2"),
        (["--model.init_args.init_scale=-1e-15"], "model.init_scale must be >= 0.0"),
        (["--model.init_args.lr", "0"], "model.lr must be > 0.0, got 0"),
        (["--model.init_args.lr", "inf"], "Expected a <class 'float'>. Got value: inf"),
        (["--model.init_args.lr", "nan"], 'Parser key "lr":\n          Expected a <class \'float\'>. Got value: nan'),
        (["--model.init_args.width", "0"], "model.width must be >= 1, got 0"),
        (["--trainer.max_steps", "-1"], "trainer.max_steps must be an integer >= 1"),
    ],
)
def test_bad_setting_exits_with_message(tmp_path, capsys, override, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(_fit_args(tmp_path, *override))
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_bad_flip_rate_from_shell_prints_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lightning_grok", *_fit_args(tmp_path, "--data.flip_rate", "0.7")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2
    assert "data.flip_rate" in result.stderr
    assert "Traceback" not in result.stderr
