import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import numpy as np
import pytest
import yaml

from _events import read_scalars
from lightning_grok.cli import main
from lightning_grok.report import (
    PNG_SIGNATURE,
    accuracy_table,
    choose_steps,
    format_cell,
    histogram_buckets,
    read_run,
    table_steps,
    write_report,
)
from lightning_grok.report import main as report_main

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 3
FIGURE_STEPS = [0, 1, 3]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A three-seed run with every probe the report reads, logged at each of steps 0-3."""
    tmp_path = tmp_path_factory.mktemp("fit")
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_steps": MAX_STEPS,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "tiny"},
            },
            "callbacks": [{"class_path": "probes.NeuronAlignment", "init_args": {"figure_steps": FIGURE_STEPS}}],
            "enable_progress_bar": False,
            "enable_checkpointing": False,
            "default_root_dir": str(tmp_path),
        },
        "model": {
            "class_path": "lightning_grok.DenseXORNetwork",
            "init_args": {"width": 8, "init_scale": 1e-15, "lr": 3e-15, "test_schedule": "every", "test_every": 1},
        },
        "data": {"input_dim": 40, "num_train": 12, "num_test": 16, "flip_rate": 0.25, "num_seeds": 3},
    }
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(config_path)])
    (run,) = (tmp_path / "runs" / "tiny").iterdir()
    return run


@pytest.fixture(scope="module")
def report_dir(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    write_report(run_dir, out)
    return out


def _assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3
    assert image.shape[0] > 100
    assert image.shape[1] > 100


def test_report_writes_valid_pngs(report_dir):
    names = ["accuracy.png", "alignment_histograms.png", *(f"plane_step{step}.png" for step in FIGURE_STEPS)]
    for name in names:
        _assert_png(report_dir / name)
    assert sorted(path.name for path in report_dir.glob("*.png")) == sorted(names)


def test_report_table_has_logged_medians(run_dir, report_dir):
    scalars = read_scalars(run_dir)
    report = (report_dir / "report.md").read_text()
    for step in range(MAX_STEPS + 1):
        cells = []
        for tag in ("train/acc", "test/acc", "train/acc_flipped"):
            median, low, high = (scalars[name][step] for name in (tag, f"{tag}_q20", f"{tag}_q80"))
            cells.append(f"{median:.3f} ({low:.3f}-{high:.3f})")
        assert f"| {step} | {' | '.join(cells)} |" in report


def test_report_links_every_figure(report_dir):
    report = (report_dir / "report.md").read_text()
    for path in report_dir.glob("*.png"):
        assert f"]({path.name})" in report


def test_read_run_histograms_count_neurons(run_dir):
    events = read_run(run_dir)
    for tag in ("alignment/pos_dot_mu1", "alignment/pos_dot_mu2"):
        assert sorted(events.histograms[tag]) == list(range(MAX_STEPS + 1))
        edges, counts = events.histograms[tag][0]
        assert edges.shape == (counts.size + 1,)
        assert np.all(np.diff(edges) >= 0)
        # Neurons with a_j > 0 pooled over three seeds of width 8: between 1 and 24.
        assert 1 <= counts.sum() <= 24
    assert sorted(events.images["alignment/plane"]) == FIGURE_STEPS


def test_command_line_prints_paths(run_dir, tmp_path, capsys):
    assert report_main([str(run_dir), "--out", str(tmp_path), "--histogram-steps", "0,2"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[-1] == str(tmp_path / "report.md")
    assert str(tmp_path / "alignment_histograms.png") in printed


def test_module_entry_runs_report(run_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lightning_grok", "report", str(run_dir), "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "report.md").is_file()


@pytest.mark.parametrize(
    ("make_dir", "message"),
    [
        (lambda tmp_path: tmp_path / "missing", "run folder not found"),
        (lambda tmp_path: tmp_path, "no TensorBoard event file"),
    ],
)
def test_bad_run_dir_exits_2(tmp_path, capsys, make_dir, message):
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(make_dir(tmp_path))])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error
    assert "Traceback" not in error


def test_parent_dir_error_lists_runs(run_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(run_dir.parent)])
    assert exit_info.value.code == 2
    assert str(run_dir) in capsys.readouterr().err


def test_run_without_probes_skips_figures(tmp_path, capsys):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as writer:
        for step in range(3):
            writer.add_scalar("train/acc", 0.5 + 0.25 * step, step)
    written = write_report(tmp_path, tmp_path / "out")
    printed = capsys.readouterr().out
    assert [path.name for path in written] == ["accuracy.png", "report.md"]
    assert "skipped the histogram figure" in printed
    assert "skipped the projection figures" in printed
    assert "| 2 | 1.000 | - | - |" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize(
    ("steps", "max_count", "expected"),
    [
        ([0, 1, 2], 5, [0, 1, 2]),
        ([3, 1, 1, 0], 5, [0, 1, 3]),
        (range(51), 20, [0, 1, 2, 3, 5, 7, 10, 20, 30, 50]),
        (range(0, 401, 5), 12, [0, 5, 10, 20, 30, 50, 70, 100, 200, 300, 400]),
        (range(0, 401, 5), 4, [0, 20, 100, 400]),
        (range(5001), 6, [0, 5, 30, 100, 700, 5000]),
        ([0, 1, 2, 3, 4, 6, 8, 13], 7, [0, 1, 2, 3, 6, 8, 13]),
    ],
)
def test_choose_steps(steps, max_count, expected):
    assert choose_steps(steps, max_count) == expected


def test_choose_steps_rejects_small_max():
    with pytest.raises(ValueError, match="max_count must be >= 2"):
        choose_steps(range(10), 1)


def test_format_cell_cases():
    scalars = {"test/acc": {0: 0.5, 1: 0.8125}, "test/acc_q20": {1: 0.75}, "test/acc_q80": {1: 0.875}}
    assert format_cell(scalars, "test/acc", 0) == "0.500"
    assert format_cell(scalars, "test/acc", 1) == "0.812 (0.750-0.875)"
    assert format_cell(scalars, "test/acc", 2) == "-"
    assert format_cell(scalars, "train/acc", 0) == "-"


def test_accuracy_table_rows():
    scalars = {"train/acc": {0: 0.5, 1: 1.0}, "test/acc": {1: 0.625}}
    assert accuracy_table(scalars, [0, 1]).splitlines() == [
        "| step t | train/acc | test/acc | train/acc_flipped |",
        "|---:|---:|---:|---:|",
        "| 0 | 0.500 | - | - |",
        "| 1 | 1.000 | 0.625 | - |",
    ]


def test_table_steps_prefer_test_steps():
    assert table_steps({"train/acc": {0: 0.5, 1: 1.0, 2: 1.0}, "test/acc": {0: 0.5, 2: 0.9}}) == [0, 2]
    assert table_steps({"train/acc": {0: 0.5, 1: 1.0}}) == [0, 1]
    assert table_steps({}) == []


def test_histogram_buckets_clip_outer_limits():
    # The layout of TensorFlow's writer: limits end at the largest double.
    histogram = SimpleNamespace(min=-0.5, max=2.5, bucket_limit=[0.0, 1.0, 2.0, 1.7976931348623157e308], bucket=[1, 0, 2, 3])
    edges, counts = histogram_buckets(histogram)
    assert edges.tolist() == [-0.5, 0.0, 1.0, 2.0, 2.5]
    assert counts.tolist() == [1, 0, 2, 3]


def test_histogram_buckets_torch_layout():
    # PyTorch's writer puts an empty bucket ending at the minimum first.
    histogram = SimpleNamespace(min=1.0, max=3.0, bucket_limit=[1.0, 2.0, 3.0], bucket=[0, 4, 5])
    edges, counts = histogram_buckets(histogram)
    assert edges.tolist() == [1.0, 1.0, 2.0, 3.0]
    assert counts.tolist() == [0, 4, 5]
