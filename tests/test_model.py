import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from _events import read_scalars
from lightning_grok import DenseXORNetwork, XORClusterDataModule
from lightning_grok.functional import logistic_loss, network_outputs, output_gradient, preactivation_gradient


def _trainer(tmp_path, max_steps, logger=False):
    return pl.Trainer(
        max_steps=max_steps,
        precision="64-true",
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )


def _hand_step(hidden, output, inputs, labels, lr):
    """One GD step written neuron by neuron:
    w_j <- w_j + (lr a_j / n) sum_i g_i relu'(<w_j, x_i>) y_i x_i, with g_i = sigmoid(-y_i f(x_i))."""
    n = inputs.shape[0]
    outputs = [sum(output[j] * max(float(hidden[j] @ x), 0.0) for j in range(len(output))) for x in inputs]
    updated = hidden.clone()
    for j in range(hidden.shape[0]):
        for i in range(n):
            if float(hidden[j] @ inputs[i]) > 0:  # relu'(0) = 0
                g = 1.0 / (1.0 + math.exp(labels[i] * outputs[i]))
                updated[j] += lr * output[j] / n * g * labels[i] * inputs[i]
    return updated


def _hand_loss_and_acc(hidden, output, inputs, labels):
    outputs = torch.relu(inputs @ hidden.T) @ output
    margins = labels * outputs
    loss = torch.log1p(torch.exp(-margins)).mean()
    return float(loss), float((margins > 0).double().mean())


def _tiny(seed=0, **model_kwargs):
    datamodule = XORClusterDataModule(input_dim=5, num_train=6, num_test=4, mean_norm=2.0, flip_rate=0.3, seed=seed)
    settings = dict(width=4, init_scale=0.5, lr=0.5, seed=seed) | model_kwargs
    return datamodule, DenseXORNetwork(input_dim=5, **settings)


def test_one_step_equals_closed_form(tmp_path):
    datamodule, model = _tiny()
    initial = model.hidden_weight.detach().double()[0].clone()
    _trainer(tmp_path, max_steps=1).fit(model, datamodule)

    expected = _hand_step(
        initial, model.output_weight[0].double(), datamodule.train_inputs[0], datamodule.train_labels[0], lr=0.5
    )
    assert model.hidden_weight.shape == (1, 4, 5)
    assert torch.allclose(model.hidden_weight[0], expected, rtol=1e-12, atol=1e-14)


def test_closed_form_gradient_matches_autograd():
    generator = torch.Generator().manual_seed(1)
    preactivations = torch.randn(2, 5, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    output_weights = torch.randn(2, 5, generator=generator, dtype=torch.float64)
    labels = torch.where(torch.rand(2, 7, generator=generator) < 0.5, -1.0, 1.0).double()

    outputs = network_outputs(preactivations, output_weights)
    logistic_loss(outputs, labels).sum().backward()
    closed_form = preactivation_gradient(preactivations, output_weights, output_gradient(outputs, labels, 7))
    assert torch.allclose(preactivations.grad, closed_form, rtol=1e-12, atol=1e-15)


def test_logged_values_describe_weights_after_t_steps(tmp_path):
    datamodule, model = _tiny()
    hidden = model.hidden_weight.detach().double()[0].clone()
    output = model.output_weight[0].double()
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    _trainer(tmp_path, max_steps=3, logger=logger).fit(model, datamodule)
    scalars = read_scalars(logger.log_dir)

    inputs, labels = datamodule.train_inputs[0], datamodule.train_labels[0]
    assert sorted(scalars["train/loss"]) == [0, 1, 2, 3]
    for step in range(4):
        loss, accuracy = _hand_loss_and_acc(hidden, output, inputs, labels)
        assert scalars["train/loss"][step] == pytest.approx(loss, rel=1e-6), step
        assert scalars["train/acc"][step] == pytest.approx(accuracy), step
        hidden = _hand_step(hidden, output, inputs, labels, lr=0.5)


def test_test_metrics_follow_schedule(tmp_path):
    datamodule, model = _tiny(test_every=4)
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    _trainer(tmp_path, max_steps=10, logger=logger).fit(model, datamodule)
    scalars = read_scalars(logger.log_dir)
    assert sorted(scalars["test/acc"]) == [0, 1, 4, 8, 10]
    assert sorted(scalars["test/acc_noisy"]) == [0, 1, 4, 8, 10]
    assert sorted(scalars["train/acc"]) == list(range(11))


def test_first_step_memorizes_at_chance(tmp_path):
    # p much larger than n: after one step the network is close to the linear
    # classifier x -> <sum_i y_i x_i, x>, which fits every label but tests at chance.
    datamodule = XORClusterDataModule(input_dim=4000, num_train=20, num_test=1000, flip_rate=0.1, seed=0)
    model = DenseXORNetwork(input_dim=4000, width=200, init_scale=1e-15, lr=1e-12, seed=0)
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    _trainer(tmp_path, max_steps=1, logger=logger).fit(model, datamodule)
    scalars = read_scalars(logger.log_dir)

    assert datamodule.flip_mask.sum() > 0
    assert scalars["train/acc"][1] == 1.0
    assert scalars["train/acc_flipped"][1] == 1.0
    assert 0.4 <= scalars["test/acc"][1] <= 0.6


def test_ensemble_members_train_independently(tmp_path):
    datamodule = XORClusterDataModule(input_dim=5, num_train=6, num_test=4, mean_norm=2.0, seed=0, num_seeds=3)
    ensemble = DenseXORNetwork(input_dim=5, width=4, init_scale=0.5, lr=0.5, seed=0, num_seeds=3)
    _trainer(tmp_path, max_steps=2).fit(ensemble, datamodule)

    single_data = XORClusterDataModule(input_dim=5, num_train=6, num_test=4, mean_norm=2.0, seed=2)
    single = DenseXORNetwork(input_dim=5, width=4, init_scale=0.5, lr=0.5, seed=2)
    _trainer(tmp_path, max_steps=2).fit(single, single_data)
    assert torch.allclose(ensemble.hidden_weight[2], single.hidden_weight[0], rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("setting", "value", "allowed"),
    [
        ("width", 0, ">= 1"),
        ("init_scale", -1e-15, ">= 0"),
        ("lr", 0.0, "> 0"),
        ("lr", -1.0, "> 0"),
        ("lr", float("inf"), "finite"),
        ("seed", -1, ">= 0"),
        ("test_every", 0, ">= 1"),
    ],
)
def test_model_rejects_bad_setting(setting, value, allowed):
    with pytest.raises(ValueError) as error:
        DenseXORNetwork(input_dim=5, **{setting: value})
    assert f"model.{setting}" in str(error.value)
    assert allowed in str(error.value)


def test_ensemble_logs_median_quantiles_and_per_seed(tmp_path):
    datamodule = XORClusterDataModule(input_dim=5, num_train=6, num_test=4, mean_norm=2.0, seed=0, num_seeds=4)
    model = DenseXORNetwork(input_dim=5, width=4, init_scale=0.5, lr=0.5, num_seeds=4, log_per_seed=True)
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    _trainer(tmp_path, max_steps=2, logger=logger).fit(model, datamodule)
    scalars = read_scalars(logger.log_dir)

    for step in range(3):
        per_seed = torch.tensor([scalars[f"train/loss_seed{member}"][step] for member in range(4)])
        assert scalars["train/loss"][step] == pytest.approx(float(per_seed.quantile(0.5)), rel=1e-6)
        assert scalars["train/loss_q20"][step] == pytest.approx(float(per_seed.quantile(0.2)), rel=1e-6)
        assert scalars["train/loss_q80"][step] == pytest.approx(float(per_seed.quantile(0.8)), rel=1e-6)
    assert "alignment/pos_mu1" not in scalars  # no probes attached
