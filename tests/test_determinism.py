"""Seeds: equal settings log equal values, and the data seed and the model seed act separately.

An ensemble member matching the single run with the shifted seed is checked in
test_model.py (weights after training) and test_data.py (data).
"""

import math
from pathlib import Path

import torch

from _events import read_scalars
from lightning_grok.cli import TRAINER_DEFAULTS, GrokCLI, main
from lightning_grok.data import XORClusterDataModule
from lightning_grok.model import XORNetwork

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--data.input_dim", "40", "--data.num_train", "8", "--data.num_test", "16",
    "--data.flip_rate", "0.3", "--model.init_args.width", "6",
]


def _fit_and_read(save_dir):
    """Fit 4 steps with the probes of configs/base.yaml and return every logged scalar."""
    main([
        "fit", "--config", str(ROOT / "configs/base.yaml"), *TINY,
        "--trainer.logger.init_args.save_dir", str(save_dir),
        "--trainer.default_root_dir", str(save_dir),
        "--trainer.enable_progress_bar", "false", "--trainer.max_steps", "4",
    ])
    (run,) = (save_dir / "base").iterdir()
    return read_scalars(run)


def _built_cli(*settings):
    """Build the model and data module of the base config with ``settings``, without running a subcommand."""
    return GrokCLI(
        XORNetwork,
        XORClusterDataModule,
        subclass_mode_model=True,
        trainer_defaults=TRAINER_DEFAULTS,
        args=["--config", str(ROOT / "configs/base.yaml"), *TINY, "--trainer.logger", "false", *settings],
        run=False,
    )


def _same_value(first, second):
    # train/acc_flipped is NaN at a step of a member with no flipped point.
    return first == second or (math.isnan(first) and math.isnan(second))


def test_equal_settings_log_equal_values(tmp_path):
    first = _fit_and_read(tmp_path / "first")
    second = _fit_and_read(tmp_path / "second")

    assert {"train/loss", "test/acc", "alignment/pos_mu1", "linear/share_test", "margins/flipped_min"} <= set(first)
    assert set(first) == set(second)
    for tag, values in first.items():
        assert values.keys() == second[tag].keys(), tag
        for step, value in values.items():
            assert _same_value(value, second[tag][step]), (tag, step, value, second[tag][step])


def test_other_data_seed_draws_other_data():
    first = _built_cli("--data.seed", "1").datamodule
    second = _built_cli("--data.seed", "2").datamodule
    first.setup("fit")
    second.setup("fit")

    assert not torch.equal(first.cluster_means, second.cluster_means)
    assert not torch.equal(first.train_inputs, second.train_inputs)
    assert not torch.equal(first.test_inputs, second.test_inputs)


def test_model_seed_alone_sets_initial_weights():
    # The data seed and the global seed of seed_everything differ; the model seed does not.
    first = _built_cli("--data.seed", "1", "--seed_everything", "0", "--model.init_args.seed", "3").model
    second = _built_cli("--data.seed", "2", "--seed_everything", "7", "--model.init_args.seed", "3").model
    other = _built_cli("--data.seed", "1", "--seed_everything", "0", "--model.init_args.seed", "4").model

    assert first.hidden_weight.shape == (1, 6, 40)
    assert torch.equal(first.hidden_weight, second.hidden_weight)
    assert torch.equal(first.output_weight, second.output_weight)
    assert not torch.equal(first.hidden_weight, other.hidden_weight)
