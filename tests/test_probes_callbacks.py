"""Tests of the probe callbacks on tiny Trainers, asserting on the logged event and CSV files.

The module and data module here are foreign to the probes: they name their
tensors differently from lightning_grok, and the probes reach them through
ProbeAccess paths alone.
"""

import csv
import math
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from probes import CustomScalarsLayout, FlippedMargins, LinearComponent, Milestones, NeuronAlignment, ProbeAccess
from probes import functional as F
from probes.callbacks import LAYOUT_TAG
from probes.snapshot import cluster_data, dense_snapshot

P, M, N, N_TEST = 6, 8, 16, 24

FOREIGN_ACCESS = ProbeAccess(
    hidden_weight="module.net.0.weight",
    output_weight="module.net.2.weight",
    cluster_means="datamodule.centers",
    train_inputs="datamodule.x_fit",
    train_labels="datamodule.y_fit",
    flip_mask="datamodule.noisy",
    test_inputs="datamodule.x_eval",
    test_labels="datamodule.y_eval",
    snapshot_method=None,
)

SCALAR_TAGS = [
    "alignment/pos_mu1",
    "alignment/pos_mu2",
    "alignment/neg_mu1",
    "alignment/neg_mu2",
    "linear/share_train",
    "linear/share_test",
    "linear/acc_test",
    "even/acc_test",
    "linear/norm_ratio",
    "linear/cos_label_sum",
    "margins/flipped_min",
    "margins/flipped_mean",
    "margins/unflipped_min",
    "margins/unflipped_mean",
]


def xor_clusters(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample XOR cluster data with means 3 e_1 and 3 e_2; return means, inputs and clean labels in {0, 1}."""
    means = torch.zeros(2, P)
    means[0, 0] = means[1, 1] = 3.0
    cluster = torch.randint(0, 2, (n,), generator=generator)
    sign = torch.randint(0, 2, (n,), generator=generator) * 2 - 1
    inputs = sign[:, None] * means[cluster] + torch.randn(n, P, generator=generator)
    return means, inputs, (cluster == 0).long()


class ForeignData(LightningDataModule):
    """Full-batch XOR cluster data with {0, 1} labels, under names of its own."""

    def __init__(self, flips: list[int] | None = None, batches_per_epoch: int = 1) -> None:
        super().__init__()
        self.batches_per_epoch = batches_per_epoch
        generator = torch.Generator().manual_seed(1)
        self.centers, self.x_fit, clean = xor_clusters(N, generator)
        _, self.x_eval, self.y_eval = xor_clusters(N_TEST, generator)
        self.noisy = torch.zeros(N, dtype=torch.bool)
        self.noisy[flips if flips is not None else [0, 5]] = True
        self.y_fit = torch.where(self.noisy, 1 - clean, clean)

    def train_dataloader(self) -> DataLoader:
        repeats = self.batches_per_epoch
        return DataLoader(TensorDataset(self.x_fit.repeat(repeats, 1), self.y_fit.repeat(repeats)), batch_size=N)


class ForeignNet(LightningModule):
    """A two-layer ReLU network without biases whose both layers are trained; it records W(t) at every step."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.net = nn.Sequential(nn.Linear(P, M, bias=False), nn.ReLU(), nn.Linear(M, 1, bias=False))
        self.history: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.training_steps = 0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, labels = batch
        signed = 2.0 * labels - 1.0
        loss = nn.functional.softplus(-signed * self.net(inputs).squeeze(-1)).mean()
        self.log("train/loss", loss, on_step=True, on_epoch=False)
        self.training_steps += 1
        return loss

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._record()

    def on_train_end(self) -> None:
        self._record()

    def _record(self) -> None:
        self.history.append((self.net[0].weight.detach().clone(), self.net[2].weight.detach().clone()))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


def tiny_trainer(tmp_path: Path, callbacks: list, max_steps: int = 3, logger=None) -> Trainer:
    return Trainer(
        max_steps=max_steps,
        callbacks=callbacks,
        logger=logger if logger is not None else TensorBoardLogger(tmp_path, name="tb", version=0),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
        accelerator="cpu",
        devices=1,
    )


def read_events(tmp_path: Path) -> EventAccumulator:
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def expected_scalars(hidden: torch.Tensor, output: torch.Tensor, data: ForeignData) -> dict[str, float]:
    """Compute every probe scalar of one network from its weights, independently of the callbacks."""
    snapshot = dense_snapshot(hidden[None], output, data.centers[None], data.x_fit[None], data.x_eval[None])
    clusters = cluster_data(data.centers[None], data.x_fit[None], 2 * data.y_fit[None] - 1, data.noisy[None], 2 * data.y_eval[None] - 1)
    a = snapshot.output_weights
    alignment = F.alignment_by_sign(F.mean_cosines(snapshot.mean_projections, snapshot.neuron_norms, clusters.mean_norms), a)
    train_linear = F.linear_part(snapshot.train_preactivations, a)
    test_linear = F.linear_part(snapshot.test_preactivations, a)
    test_even = F.even_part(snapshot.test_preactivations, a)
    margins = F.normalized_margins(F.network_outputs(snapshot.train_preactivations, a), clusters.train_labels, snapshot.frobenius_norm)
    values = {
        "alignment/pos_mu1": alignment[:, 0, 0],
        "alignment/pos_mu2": alignment[:, 0, 1],
        "alignment/neg_mu1": alignment[:, 1, 0],
        "alignment/neg_mu2": alignment[:, 1, 1],
        "linear/share_train": F.linear_share(train_linear, F.even_part(snapshot.train_preactivations, a)),
        "linear/share_test": F.linear_share(test_linear, test_even),
        "linear/acc_test": F.sign_accuracy(test_linear, clusters.test_labels),
        "even/acc_test": F.sign_accuracy(test_even, clusters.test_labels),
        "linear/norm_ratio": F.linear_norm_ratio(snapshot.linear_norm, snapshot.frobenius_norm),
        "linear/cos_label_sum": F.label_sum_cosine(train_linear, clusters.train_labels, snapshot.linear_norm, clusters.label_sum_norm),
        "margins/flipped_min": F.masked_min(margins, clusters.flip_mask),
        "margins/flipped_mean": F.masked_mean(margins, clusters.flip_mask),
        "margins/unflipped_min": F.masked_min(margins, ~clusters.flip_mask),
        "margins/unflipped_mean": F.masked_mean(margins, ~clusters.flip_mask),
    }
    return {tag: value.item() for tag, value in values.items()}


def test_foreign_module_logs_steps_0_to_3(tmp_path):
    model, data = ForeignNet(), ForeignData()
    callbacks = [
        NeuronAlignment(FOREIGN_ACCESS, figure_steps=[0, 3]),
        LinearComponent(FOREIGN_ACCESS),
        FlippedMargins(FOREIGN_ACCESS),
        CustomScalarsLayout(access=FOREIGN_ACCESS),
    ]
    tiny_trainer(tmp_path, callbacks).fit(model, datamodule=data)
    events = read_events(tmp_path)

    assert len(model.history) == 4
    expected = [expected_scalars(hidden, output, data) for hidden, output in model.history]
    assert expected[0]["margins/unflipped_mean"] != pytest.approx(expected[3]["margins/unflipped_mean"], rel=1e-3)
    for tag in SCALAR_TAGS:
        logged = events.Scalars(tag)
        assert [event.step for event in logged] == [0, 1, 2, 3], tag
        for event, values in zip(logged, expected):
            assert event.value == pytest.approx(values[tag], rel=1e-5, abs=1e-7), f"{tag} at step {event.step}"


def test_foreign_module_writes_histograms_figures_layout(tmp_path):
    model, data = ForeignNet(), ForeignData()
    callbacks = [NeuronAlignment(FOREIGN_ACCESS, figure_steps=[0, 3]), FlippedMargins(FOREIGN_ACCESS), CustomScalarsLayout(access=FOREIGN_ACCESS)]
    tiny_trainer(tmp_path, callbacks).fit(model, datamodule=data)
    events = read_events(tmp_path)

    for tag in ("alignment/pos_dot_mu1", "alignment/pos_dot_mu2", "margins/flipped", "margins/unflipped"):
        assert [event.step for event in events.Histograms(tag)] == [0, 1, 2, 3], tag
    flipped_counts = [event.histogram_value.num for event in events.Histograms("margins/flipped")]
    assert flipped_counts == [2, 2, 2, 2]
    positive_neurons = int((model.history[0][1] > 0).sum())
    assert events.Histograms("alignment/pos_dot_mu1")[0].histogram_value.num == positive_neurons
    assert [event.step for event in events.Images("alignment/plane")] == [0, 3]

    layout = layout_pb2.Layout()
    layout.ParseFromString(events.Tensors(LAYOUT_TAG)[0].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for chart in layout.category[0].chart}
    assert charts["train and test accuracy"] == ["^train/acc$", "^test/acc$"]
    assert charts["alignment with mu_1"] == ["^alignment/pos_mu1$", "^alignment/neg_mu1$"]
    assert len(charts["flipped and unflipped margins"]) == 4


@pytest.mark.parametrize("batches_per_epoch", [1, 5])
def test_schedule_every_two_steps(tmp_path, batches_per_epoch):
    callbacks = [LinearComponent(FOREIGN_ACCESS, schedule="every", every=2)]
    data = ForeignData(batches_per_epoch=batches_per_epoch)
    tiny_trainer(tmp_path, callbacks, max_steps=5).fit(ForeignNet(), datamodule=data)

    steps = [event.step for event in read_events(tmp_path).Scalars("linear/share_test")]
    assert steps == [0, 1, 2, 4, 5]


def test_wrong_path_fails_before_training(tmp_path):
    access = ProbeAccess(**{**vars(FOREIGN_ACCESS), "hidden_weight": "module.network.0.weight"})
    model = ForeignNet()

    with pytest.raises(AttributeError, match=r"module\.network\.0\.weight"):
        tiny_trainer(tmp_path, [LinearComponent(access)]).fit(model, datamodule=ForeignData())
    assert model.training_steps == 0


def test_csv_logger_scalars_and_one_warning(tmp_path):
    callbacks = [
        NeuronAlignment(FOREIGN_ACCESS, figure_steps=[1]),
        LinearComponent(FOREIGN_ACCESS),
        FlippedMargins(FOREIGN_ACCESS),
        CustomScalarsLayout(access=FOREIGN_ACCESS),
    ]
    trainer = tiny_trainer(tmp_path, callbacks, logger=CSVLogger(tmp_path, name="csv", version=0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(ForeignNet(), datamodule=ForeignData())

    tensorboard_warnings = [warning for warning in caught if "TensorBoardLogger" in str(warning.message)]
    assert len(tensorboard_warnings) == 1
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    for tag in SCALAR_TAGS:
        steps = sorted(int(row["step"]) for row in rows if row.get(tag))
        assert steps == [0, 1, 2, 3], tag


class EnsembleNet(LightningModule):
    """An ensemble of S networks stored as (S, m, p) and (S, m) tensors, read through the default access paths."""

    def __init__(self, ensemble_size: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.hidden_weight = nn.Parameter(torch.randn(ensemble_size, M, P, generator=generator, dtype=torch.float64))
        signs = torch.randint(0, 2, (ensemble_size, M), generator=generator) * 2 - 1
        self.register_buffer("output_weight", signs.double() / math.sqrt(M))

    def training_step(self, batch, batch_idx) -> torch.Tensor:
        return self.hidden_weight.square().sum() * 0.1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class EnsembleData(LightningDataModule):
    """Data with the default access names; seed 1 has no flipped point."""

    def __init__(self, ensemble_size: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(4)
        samples = [xor_clusters(N, generator) for _ in range(ensemble_size)]
        tests = [xor_clusters(N_TEST, generator) for _ in range(ensemble_size)]
        self.cluster_means = torch.stack([means for means, _, _ in samples]).double()
        self.train_inputs = torch.stack([inputs for _, inputs, _ in samples]).double()
        self.flip_mask = torch.zeros(ensemble_size, N, dtype=torch.bool)
        self.flip_mask[0, :3] = True
        clean = torch.stack([labels for _, _, labels in samples]) * 2 - 1
        self.train_labels = torch.where(self.flip_mask, -clean, clean)
        self.test_inputs = torch.stack([inputs for _, inputs, _ in tests]).double()
        self.test_labels = torch.stack([labels for _, _, labels in tests]) * 2 - 1

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(1)), batch_size=1)


def test_ensemble_logs_quantiles_and_drops_nan_seed(tmp_path):
    model, data = EnsembleNet(ensemble_size=2), EnsembleData(ensemble_size=2)
    callbacks = [NeuronAlignment(figure_steps=[1]), FlippedMargins(), LinearComponent(), CustomScalarsLayout()]
    tiny_trainer(tmp_path, callbacks, max_steps=2).fit(model, datamodule=data)
    events = read_events(tmp_path)

    positive_neurons = int((model.output_weight > 0).sum())
    assert events.Histograms("alignment/pos_dot_mu2")[0].histogram_value.num == positive_neurons
    assert [event.step for event in events.Images("alignment/plane")] == [1]

    scalar_tags = events.Tags()["scalars"]
    for tag in ("margins/flipped_min", "linear/share_test", "linear/cos_label_sum"):
        for suffix in ("", "_q20", "_q80"):
            assert f"{tag}{suffix}" in scalar_tags
    snapshot = dense_snapshot(model.hidden_weight, model.output_weight, data.cluster_means, data.train_inputs, data.test_inputs)
    outputs = F.network_outputs(snapshot.train_preactivations, snapshot.output_weights)
    margins = F.normalized_margins(outputs, data.train_labels.double(), snapshot.frobenius_norm)
    seed_zero_flipped_min = margins[0, :3].min().item()
    final = events.Scalars("margins/flipped_min")[-1]
    assert final.step == 2
    assert final.value == pytest.approx(seed_zero_flipped_min, rel=1e-6)
    assert events.Scalars("margins/flipped_min_q80")[-1].value == pytest.approx(seed_zero_flipped_min, rel=1e-6)

    layout = layout_pb2.Layout()
    layout.ParseFromString(events.Tensors(LAYOUT_TAG)[0].tensor_proto.string_val[0])
    accuracy_chart = layout.category[0].chart[0]
    assert [(series.value, series.lower, series.upper) for series in accuracy_chart.margin.series] == [
        ("train/acc", "train/acc_q20", "train/acc_q80"),
        ("test/acc", "test/acc_q20", "test/acc_q80"),
    ]


TRAIN_ACC = [0.5, 0.9, 1.0, 0.95, 1.0, 1.0, 1.0]
TEST_ACC = [0.5, 0.5, 0.55, 0.7, 0.95, 0.95, 0.995]


class ScriptedMetrics(LightningModule):
    """Log scripted train/acc and test/acc values describing W(t): at batch start, and at the end for t = T."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._log_scripted(self.trainer.global_step, on_step=True)

    def on_train_epoch_end(self) -> None:
        if self.trainer.global_step >= self.trainer.max_steps:
            self._log_scripted(self.trainer.global_step, on_step=False)

    def _log_scripted(self, step: int, on_step: bool) -> None:
        self.log("train/acc", TRAIN_ACC[step], on_step=on_step, on_epoch=not on_step)
        self.log("test/acc", TEST_ACC[step], on_step=on_step, on_epoch=not on_step)

    def training_step(self, batch, batch_idx) -> torch.Tensor:
        return self.weight.square().sum()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(1)), batch_size=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_milestones_scripted_steps(tmp_path):
    milestones = Milestones()
    logger = CSVLogger(tmp_path, name="csv", version=0)
    tiny_trainer(tmp_path, [milestones], max_steps=6, logger=logger).fit(ScriptedMetrics())

    assert milestones.milestones == {
        "milestones/memorized_step": 2,
        "milestones/test_acc_0.6_step": 3,
        "milestones/test_acc_0.6_delay": 1,
        "milestones/test_acc_0.9_step": 4,
        "milestones/test_acc_0.9_delay": 2,
        "milestones/test_acc_0.99_step": 6,
        "milestones/test_acc_0.99_delay": 4,
    }
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    logged = {(tag, int(row["step"])): float(value) for row in rows for tag, value in row.items() if tag.startswith("milestones/") and value}
    assert logged == {
        ("milestones/memorized_step", 2): 2.0,
        ("milestones/test_acc_0.6_step", 3): 3.0,
        ("milestones/test_acc_0.6_delay", 3): 1.0,
        ("milestones/test_acc_0.9_step", 4): 4.0,
        ("milestones/test_acc_0.9_delay", 4): 2.0,
        ("milestones/test_acc_0.99_step", 6): 6.0,
        ("milestones/test_acc_0.99_delay", 6): 4.0,
    }


def test_milestones_state_dict_round_trip():
    original = Milestones(thresholds=[0.9, 0.6])
    original.memorized_step = 7
    original.threshold_steps[0.6] = 9
    restored = Milestones(thresholds=[0.6, 0.9])
    restored.load_state_dict(original.state_dict())

    assert restored.memorized_step == 7
    assert restored.threshold_steps == {0.6: 9, 0.9: None}
    assert restored.state_key == original.state_key


def test_milestones_survive_resume(tmp_path):
    first = tiny_trainer(tmp_path, [Milestones()], max_steps=3, logger=CSVLogger(tmp_path, name="first"))
    first.fit(ScriptedMetrics())
    checkpoint = tmp_path / "step3.ckpt"
    first.save_checkpoint(checkpoint)

    resumed = Milestones()
    second = tiny_trainer(tmp_path, [resumed], max_steps=6, logger=CSVLogger(tmp_path, name="second"))
    second.fit(ScriptedMetrics(), ckpt_path=checkpoint)

    assert resumed.memorized_step == 2
    assert resumed.threshold_steps == {0.6: 3, 0.9: 4, 0.99: 6}


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: LinearComponent(schedule="linear"), r"'every' or 'log', got 'linear'"),
        (lambda: FlippedMargins(every=0), r"every must be an integer >= 1, got 0"),
        (lambda: NeuronAlignment(schedule="log", per_decade=-2), r"per_decade must be an integer >= 1, got -2"),
        (lambda: NeuronAlignment(figure_steps=[0, -5]), r"figure_steps must contain integers >= 0, got -5"),
        (lambda: Milestones(train_metric=""), r"train_metric must be a non-empty metric name"),
        (lambda: Milestones(thresholds=[]), r"thresholds must contain at least one level"),
        (lambda: Milestones(thresholds=[0.5, float("nan")]), r"thresholds must contain finite numbers, got nan"),
        (lambda: CustomScalarsLayout(ensemble_size=0), r"ensemble_size must be None or an integer >= 1, got 0"),
    ],
)
def test_invalid_arguments_rejected(build, message):
    with pytest.raises(ValueError, match=message):
        build()
