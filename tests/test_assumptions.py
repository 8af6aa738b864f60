import logging
import math

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_grok.assumptions import check_assumptions, format_assumptions
from lightning_grok.cli import main

# The experimental settings of Xu, Wang, Frei, Vardi and Hu (ICLR 2024): p = 40000, n = 200, m = 1000,
# eta = 0.05, ||mu|| = 2.5 sqrt(p / n), alpha = 1e-12, omega_init = 1e-15.
PAPER = dict(
    input_dim=40000, num_train=200, width=1000, flip_rate=0.05,
    mean_norm=2.5 * math.sqrt(40000 / 200), lr=1e-12, init_scale=1e-15,
)


def _by_name(**settings):
    return {check.name: check for check in check_assumptions(**settings)}


def test_paper_settings_fail_a1_a2_a5():
    checks = _by_name(**PAPER)
    assert [name for name, check in checks.items() if not check.holds] == ["A1", "A2", "A5"]


def test_paper_settings_constants_by_hand():
    checks = _by_name(**PAPER)
    # ||mu||^2 = 6.25 * 40000 / 200 = 1250 and sqrt(p) = 200.
    assert checks["A1"].largest_constant == pytest.approx(1250 / (200**0.51 * 200), rel=1e-12)
    assert checks["A1"].largest_constant == pytest.approx(0.4192, abs=1e-4)
    assert checks["A2"].largest_constant == pytest.approx(40000 / (200**2 * 1250), rel=1e-12)
    assert checks["A2"].largest_constant == pytest.approx(8e-4, rel=1e-12)
    assert checks["A3"].largest_constant == pytest.approx(20.0, rel=1e-12)
    assert checks["A4"].largest_constant == pytest.approx(1 / 8e-6, rel=1e-12)  # alpha n p = 8e-6
    assert checks["A6"].largest_constant == pytest.approx(1000 / 200**0.02, rel=1e-12)
    assert checks["A6"].largest_constant == pytest.approx(899.4, abs=0.1)


def test_paper_settings_a5_ratio_by_hand():
    check = _by_name(**PAPER)["A5"]
    # alpha ||mu||^2 = 1.25e-9; omega n m^1.5 p = 1e-15 * 200 * 1000^1.5 * 40000 = 8e-6 * sqrt(1000).
    assert check.largest_constant is None
    assert check.ratio == pytest.approx(1.25e-9 / (8e-6 * math.sqrt(1000)), rel=1e-12)
    assert check.ratio == pytest.approx(4.941e-6, rel=1e-3)
    assert not check.holds


def test_holds_means_constant_at_least_one():
    # n = 1 makes every power of n equal to 1: A1 reads ||mu||^2 >= C sqrt(p).
    checks = _by_name(input_dim=4, num_train=1, width=1, flip_rate=0.5, mean_norm=math.sqrt(2.0), lr=0.25, init_scale=0.0)
    assert checks["A1"].largest_constant == pytest.approx(1.0)
    assert checks["A1"].holds
    assert checks["A3"].largest_constant == pytest.approx(2.0)
    assert checks["A4"].largest_constant == pytest.approx(1.0)
    assert checks["A4"].holds
    assert checks["A6"].largest_constant == pytest.approx(1.0)
    assert checks["A2"].largest_constant == pytest.approx(2.0)


def test_zero_denominators_give_infinity():
    checks = _by_name(input_dim=100, num_train=10, width=20, flip_rate=0.0, mean_norm=0.0, lr=1e-5, init_scale=0.0)
    assert checks["A3"].largest_constant == math.inf
    assert checks["A3"].holds
    assert checks["A2"].largest_constant == math.inf  # ||mu|| = 0
    assert checks["A1"].largest_constant == 0.0
    assert not checks["A1"].holds
    assert checks["A5"].ratio == math.inf  # omega_init = 0: the left side is 0
    assert checks["A5"].holds


def test_format_table_rows():
    table = format_assumptions(check_assumptions(**PAPER))
    lines = table.splitlines()
    assert len(lines) == 2 + 6
    assert lines[2] == "| A1 | ‖mu‖^2 >= C n^0.51 sqrt(p) | 0.419 | no |"
    assert lines[4] == "| A3 | eta <= 1/C | 20 | yes |"
    assert "4.94e-06" in lines[6]
    assert all(line.count("|") == 5 for line in lines)  # no stray cell separator


def test_fit_prints_and_logs_table(tmp_path, caplog):
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_steps": 1,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "tiny"},
            },
            "enable_progress_bar": False,
            "enable_checkpointing": False,
            "default_root_dir": str(tmp_path),
        },
        "model": {"class_path": "lightning_grok.DenseXORNetwork", "init_args": {"width": 6}},
        "data": {"input_dim": 40, "num_train": 8, "num_test": 16, "flip_rate": 0.25},
    }
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(config))
    caplog.set_level(logging.INFO)
    cli = main(["fit", "--config", str(config_path)])
    expected = format_assumptions(check_assumptions(
        input_dim=40, num_train=8, width=6, flip_rate=0.25,
        mean_norm=cli.datamodule.mean_norm, lr=cli.model.lr, init_scale=cli.model.init_scale,
    ))

    # Lightning's info log goes to stderr, or to pytest's log capture under pytest.
    assert expected in caplog.text

    (run,) = (tmp_path / "runs" / "tiny").iterdir()
    accumulator = EventAccumulator(str(run), size_guidance={"tensors": 0})
    accumulator.Reload()
    (event,) = accumulator.Tensors("assumptions/text_summary")
    assert event.step == 0
    assert event.tensor_proto.string_val[0].decode() == expected
