"""Bad settings typed on the command line: each exits with status 2 and a message, before a run starts.

Most rows call ``lightning_grok.cli.main`` in-process; rows marked ``shell`` run
``python -m lightning_grok`` in a subprocess to check the real stderr for tracebacks.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_grok.cli import main

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = str(ROOT / "configs/base.yaml")
TINY = [
    "--data.input_dim", "40", "--data.num_train", "8", "--data.num_test", "16",
    "--model.init_args.width", "6",
]

# Config files that the rows refer to by name; each is written into the row's tmp_path.
FILES = {
    "malformed.yaml": "data:\n  input_dim: [40\n  num_train: : 8\n",
    "top_level_key.yaml": "data:\n  input_dim: 40\nepochs: 3\n",
    "data_key.yaml": "data:\n  flip_rat: 0.1\n",
    "probe_path.yaml": (
        "trainer:\n  callbacks:\n    - class_path: probes.NeuronAlignment\n      init_args:\n"
        "        access:\n          hidden_weight: module.nope\n          snapshot_method: null\n"
    ),
    "figure_step.yaml": (
        "trainer:\n  callbacks:\n    - class_path: probes.NeuronAlignment\n      init_args:\n"
        "        figure_steps: [0, -5]\n"
    ),
    "per_decade.yaml": (
        "trainer:\n  callbacks:\n    - class_path: probes.LinearComponent\n      init_args:\n"
        "        schedule: log\n        per_decade: 0\n"
    ),
    "schedule_mode.yaml": (
        "trainer:\n  callbacks:\n    - class_path: probes.FlippedMargins\n      init_args:\n"
        "        schedule: weekly\n"
    ),
    "not_a_checkpoint.ckpt": "model:\n  width: 6\n",
}

# (id, subcommand, arguments after the tiny settings, substrings of stderr, how to run).
# "{tmp}" is the row's tmp_path and "{ckpt}" a checkpoint of a 2-step width-6 run.
ROWS = [
    ("num_train_not_int", "fit", ["--data.num_train", "abc"],
     ['Parser key "data.num_train"', "Expected a <class 'int'>. Got value: abc"], "main"),
    ("flip_rate_word", "fit", ["--data.flip_rate", "high"],
     ['Parser key "data.flip_rate"', "Got value: high"], "main"),
    ("width_not_int", "fit", ["--model.init_args.width", "2.5"],
     ['Parser key "width"', "Expected a <class 'int'>. Got value: 2.5"], "main"),
    ("flip_rate_half", "fit", ["--data.flip_rate", "0.5"],
     ["data.flip_rate must be in [0, 0.5), got 0.5"], "shell"),
    ("flip_rate_negative", "fit", ["--data.flip_rate=-0.1"], ["data.flip_rate must be in [0, 0.5), got -0.1"], "main"),
    ("flip_rate_above_half", "fit", ["--data.flip_rate", "0.7"], ["data.flip_rate must be in [0, 0.5), got 0.7"], "main"),
    ("input_dim_one", "fit", ["--data.input_dim", "1"], ["data.input_dim must be >= 2, got 1"], "main"),
    ("num_test_zero", "fit", ["--data.num_test", "0"], ["data.num_test must be >= 1, got 0"], "main"),
    ("num_seeds_zero", "fit", ["--data.num_seeds", "0"], ["data.num_seeds must be >= 1, got 0"], "main"),
    ("data_seed_negative", "fit", ["--data.seed=-1"], ["data.seed must be >= 0, got -1"], "main"),
    ("mean_norm_negative", "fit", ["--data.mean_norm=-2"], ["data.mean_norm must be >= 0.0, got -2"], "main"),
    ("init_scale_negative", "fit", ["--model.init_args.init_scale=-1e-15"],
     ["model.init_scale must be >= 0.0, got -1e-15"], "main"),
    ("lr_zero", "fit", ["--model.init_args.lr", "0"], ["model.lr must be > 0.0, got 0"], "main"),
    ("width_zero", "fit", ["--model.init_args.width", "0"], ["model.width must be >= 1, got 0"], "main"),
    ("test_every_zero", "fit", ["--model.init_args.test_every", "0"], ["model.test_every must be >= 1, got 0"], "main"),
    ("test_schedule_unknown", "fit", ["--model.init_args.test_schedule", "linear"],
     ["Expected a typing.Literal['every', 'log']. Got value: linear"], "main"),
    ("max_steps_zero", "fit", ["--trainer.max_steps", "0"],
     ["trainer.max_steps must be an integer >= 1 (the number of GD steps), got 0"], "main"),
    ("max_steps_negative", "fit", ["--trainer.max_steps", "-1"],
     ["trainer.max_steps must be an integer >= 1 (the number of GD steps), got -1"], "main"),
    ("precision_unknown", "fit", ["--trainer.precision", "float64"],
     ['Parser key "trainer.precision"', "Given value: float64"], "main"),
    ("data_key_prefix", "fit", ["--data.flip_rat", "0.1"], ["unrecognized arguments: --data.flip_rat 0.1"], "main"),
    ("model_key_typo", "fit", ["--model.init_args.widht", "10"], ["Option 'widht' is not accepted"], "main"),
    ("model_class_unknown", "fit", ["--model", "lightning_grok.NoSuchNetwork"],
     ["lightning_grok.NoSuchNetwork", "module 'lightning_grok' has no attribute 'NoSuchNetwork'"], "main"),
    ("subcommand_typo", "fitt", [], ["invalid choice: 'fitt' (choose from 'fit', 'validate', 'test', 'predict')"], "main"),
    ("config_missing", "fit", ["--config", "{tmp}/missing.yaml"],
     ["File does not exist: '{tmp}/missing.yaml'"], "shell"),
    ("config_malformed", "fit", ["--config", "{tmp}/malformed.yaml"],
     ["config file '{tmp}/malformed.yaml' is not valid YAML", "line 2, column 14"], "main"),
    ("config_top_level_key", "fit", ["--config", "{tmp}/top_level_key.yaml"],
     ["Subcommand 'fit' does not accept option 'epochs'"], "main"),
    ("config_data_key", "fit", ["--config", "{tmp}/data_key.yaml"],
     ["Subcommand 'fit' does not accept option 'data.flip_rat'"], "main"),
    ("probe_path_missing", "fit", ["--config", "{tmp}/probe_path.yaml"],
     ["probe path 'module.nope' is invalid: 'module' (DenseXORNetwork) has no attribute 'nope'",
      "fix the access paths of the probe callbacks under trainer.callbacks"], "shell"),
    ("figure_step_negative", "fit", ["--config", "{tmp}/figure_step.yaml"],
     ["figure_steps must contain integers >= 0, got -5 in [0, -5]"], "main"),
    ("probe_per_decade_zero", "fit", ["--config", "{tmp}/per_decade.yaml"],
     ["schedule per_decade must be an integer >= 1, got 0"], "main"),
    ("probe_schedule_unknown", "fit", ["--config", "{tmp}/schedule_mode.yaml"],
     ["probes.FlippedMargins", "Expected a typing.Literal['every', 'log']. Got value: weekly"], "main"),
    ("checkpoint_missing", "validate", ["--ckpt_path", "{tmp}/missing.ckpt"],
     ["ckpt_path '{tmp}/missing.ckpt': checkpoint file not found"], "main"),
    ("checkpoint_not_zip", "validate", ["--ckpt_path", "{tmp}/not_a_checkpoint.ckpt"],
     ["ckpt_path '{tmp}/not_a_checkpoint.ckpt' is not a checkpoint"], "main"),
    ("checkpoint_other_input_dim", "validate", ["--data.input_dim", "41", "--ckpt_path", "{ckpt}"],
     ["checkpoint '{ckpt}' does not fit the model these settings build",
      "hidden_weight has shape (1, 6, 40) in the checkpoint but (1, 6, 41) with these settings",
      "Use the data and model settings of the run that saved it"], "shell"),
    ("checkpoint_other_num_seeds", "fit", ["--data.num_seeds", "2", "--ckpt_path", "{ckpt}"],
     ["checkpoint '{ckpt}' does not fit the model",
      "output_weight has shape (1, 6) in the checkpoint but (2, 6) with these settings"], "main"),
]

# A wrong probe path is found when fit starts, once the data exist. Lightning has
# then written the run directory and its config.yaml, but trained no step.
WRITES_RUN_DIRECTORY = {"probe_path_missing"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint of a 2-step fit of the tiny width-6 network."""
    directory = tmp_path_factory.mktemp("trained")
    main([
        "fit", "--config", BASE_CONFIG, *TINY,
        "--trainer.logger.init_args.save_dir", str(directory / "runs"),
        "--trainer.default_root_dir", str(directory),
        "--trainer.enable_progress_bar", "false", "--trainer.max_steps", "2",
    ])
    (path,) = (directory / "runs").rglob("*.ckpt")
    return str(path)


def _command_line(subcommand, extra, tmp_path):
    return [
        subcommand, "--config", BASE_CONFIG, *TINY,
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false", "--trainer.max_steps", "2",
        *extra,
    ]


def _run(args, via, tmp_path, capsys):
    """Return the exit status and stderr of the command line ``args``."""
    if via == "shell":
        result = subprocess.run(
            [sys.executable, "-m", "lightning_grok", *args],
            capture_output=True, text=True, cwd=tmp_path, timeout=180,
            env=os.environ | {"PYTHONPATH": str(ROOT)},
        )
        return result.returncode, result.stderr
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(("subcommand", "extra", "expected", "via"), [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_bad_input_exits_with_message(request, tmp_path, monkeypatch, capsys, subcommand, extra, expected, via):
    monkeypatch.chdir(tmp_path)
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    values = {"tmp": str(tmp_path)}
    if any("{ckpt}" in arg for arg in extra):
        values["ckpt"] = request.getfixturevalue("checkpoint")
    extra = [arg.format(**values) for arg in extra]

    status, stderr = _run(_command_line(subcommand, extra, tmp_path), via, tmp_path, capsys)

    assert status == 2, stderr
    for text in expected:
        assert text.format(**values) in stderr
    assert "Traceback" not in stderr
    if request.node.callspec.id in WRITES_RUN_DIRECTORY:
        assert not list((tmp_path / "runs").rglob("*.ckpt"))
    else:
        assert not (tmp_path / "runs").exists()
