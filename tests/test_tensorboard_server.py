"""A finished run read back through a real TensorBoard server on 127.0.0.1."""

import json
import math
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from _events import read_scalars
from lightning_grok.cli import main

ROOT = Path(__file__).resolve().parents[1]
TAGS = [
    "train/loss", "train/acc", "train/acc_flipped", "train/acc_unflipped", "test/acc", "test/acc_noisy",
    "alignment/pos_mu1", "alignment/pos_mu2", "alignment/neg_mu1", "alignment/neg_mu2",
    "linear/share_train", "linear/share_test", "linear/acc_test", "even/acc_test",
    "margins/flipped_min", "margins/flipped_mean", "margins/unflipped_min", "margins/unflipped_mean",
]
STARTUP_TIMEOUT_S = 60
REQUEST_TIMEOUT_S = 10


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get_json(port, path, **query):
    url = f"http://127.0.0.1:{port}{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT_S) as response:
        return json.load(response)


def _wait_for_tags(server, port, expected_tags):
    """Poll until the server lists one run with every expected tag; return ``(run, tags)``."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last_error = None
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"tensorboard exited with status {server.returncode} before answering")
        try:
            tags_by_run = _get_json(port, "/data/plugin/scalars/tags")
        except OSError as error:  # not listening yet, or the connection was reset
            last_error = error
        else:
            for run, tags in tags_by_run.items():
                if set(expected_tags) <= set(tags):
                    return run, tags
            last_error = f"tags so far: {tags_by_run}"
        time.sleep(0.5)
    pytest.fail(f"tensorboard listed no run with every tag within {STARTUP_TIMEOUT_S} s; last: {last_error}")


def _as_float32(value):
    # TensorBoard's JSON writes NaN and infinities as the strings "NaN", "Infinity", "-Infinity".
    return np.float32(float(value))


def _equal_float32(first, second):
    return first == second or (math.isnan(first) and math.isnan(second))


@pytest.fixture
def finished_run(tmp_path):
    """A 3-step fit of a tiny network with the probes of configs/base.yaml; returns its log directory."""
    main([
        "fit", "--config", str(ROOT / "configs/base.yaml"),
        "--data.input_dim", "40", "--data.num_train", "8", "--data.num_test", "16", "--data.flip_rate", "0.3",
        "--model.init_args.width", "6",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false", "--trainer.max_steps", "3",
    ])
    (run,) = (tmp_path / "runs" / "base").iterdir()
    return run


def test_server_returns_logged_scalars(finished_run):
    logged = read_scalars(finished_run)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(finished_run),
         "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false", "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        run, tags = _wait_for_tags(server, port, TAGS)
        assert run in _get_json(port, "/data/runs")

        for tag in TAGS:
            points = _get_json(port, "/data/plugin/scalars/scalars", run=run, tag=tag)
            served = {step: _as_float32(value) for _, step, value in points}
            assert served.keys() == logged[tag].keys(), tag
            for step, value in logged[tag].items():
                assert _equal_float32(served[step], np.float32(value)), (tag, step, served[step], value)
    finally:
        server.terminate()
        try:
            server.wait(timeout=REQUEST_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=REQUEST_TIMEOUT_S)
