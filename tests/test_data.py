import math

import pytest
import torch

from lightning_grok.data import XORClusterDataModule, sample_cluster_means, sample_xor_clusters


def _draw(num_samples=20000, input_dim=6, mean_norm=8.0, flip_rate=0.2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    means = sample_cluster_means(input_dim, mean_norm, generator)
    return means, sample_xor_clusters(means, num_samples, flip_rate, generator)


def _nearest_centres(inputs, means):
    """Assign each point to the nearest of +-mu_1, +-mu_2 and return those centres."""
    centres = torch.cat([means, -means])  # (4, p)
    nearest = torch.cdist(inputs, centres).argmin(dim=1)
    return centres[nearest], nearest


def test_means_orthogonal_with_requested_norm():
    means, _ = _draw(input_dim=50, mean_norm=3.5)
    assert means.shape == (2, 50)
    assert torch.linalg.vector_norm(means, dim=1) == pytest.approx([3.5, 3.5], rel=1e-12)
    assert abs(float(means[0] @ means[1])) < 1e-12


def test_clusters_balanced():
    means, sample = _draw()
    _, cluster = _nearest_centres(sample.inputs, means)
    counts = torch.bincount(cluster, minlength=4).double()
    # Each count is Binomial(N, 1/4): allow 5 standard deviations.
    n = sample.inputs.shape[0]
    bound = 5 * math.sqrt(n * 0.25 * 0.75)
    assert torch.all((counts - n / 4).abs() < bound), counts


def test_clean_labels_follow_clusters():
    means, sample = _draw()
    _, cluster = _nearest_centres(sample.inputs, means)
    expected = torch.where(cluster % 2 == 0, 1.0, -1.0).double()  # rows 0, 2 are +-mu_1
    assert torch.equal(sample.clean_labels, expected)


def test_flip_rate_within_binomial_bound():
    _, sample = _draw(flip_rate=0.2)
    n = sample.flip_mask.numel()
    flips = sample.flip_mask.sum().item()
    assert abs(flips - 0.2 * n) < 5 * math.sqrt(n * 0.2 * 0.8)
    assert torch.equal(sample.labels[sample.flip_mask], -sample.clean_labels[sample.flip_mask])
    assert torch.equal(sample.labels[~sample.flip_mask], sample.clean_labels[~sample.flip_mask])


def test_zero_flip_rate_flips_nothing():
    _, sample = _draw(flip_rate=0.0)
    assert not sample.flip_mask.any()


def test_noise_covariance_close_to_identity():
    means, sample = _draw(num_samples=40000, input_dim=6, mean_norm=30.0)
    centres, _ = _nearest_centres(sample.inputs, means)
    noise = sample.inputs - centres
    covariance = noise.T @ noise / noise.shape[0]
    assert noise.mean(dim=0).abs().max() < 0.03
    assert (covariance - torch.eye(6, dtype=covariance.dtype)).abs().max() < 0.04


def test_same_seed_same_data_other_seed_other_data():
    _, first = _draw(seed=3, num_samples=100)
    _, again = _draw(seed=3, num_samples=100)
    _, other = _draw(seed=4, num_samples=100)
    assert torch.equal(first.inputs, again.inputs)
    assert torch.equal(first.labels, again.labels)
    assert not torch.equal(first.inputs, other.inputs)


def _setup(**kwargs):
    datamodule = XORClusterDataModule(**kwargs)
    datamodule.setup("fit")
    return datamodule


def test_datamodule_shapes_and_default_mean_norm():
    datamodule = _setup(input_dim=40, num_train=10, num_test=7, num_seeds=3)
    assert datamodule.cluster_means.shape == (3, 2, 40)
    assert datamodule.train_inputs.shape == (3, 10, 40)
    assert datamodule.train_labels.shape == (3, 10)
    assert datamodule.flip_mask.dtype == torch.bool
    assert datamodule.test_inputs.shape == (3, 7, 40)
    assert datamodule.train_inputs.dtype == torch.float32
    assert datamodule.mean_norm == pytest.approx(2.5 * math.sqrt(40 / 10))


def test_ensemble_member_matches_single_seed():
    ensemble = _setup(input_dim=20, num_train=8, num_test=5, seed=10, num_seeds=3)
    single = _setup(input_dim=20, num_train=8, num_test=5, seed=12)
    assert torch.equal(ensemble.train_inputs[2], single.train_inputs[0])
    assert torch.equal(ensemble.test_labels[2], single.test_labels[0])


def test_train_loader_yields_stored_tensors():
    datamodule = _setup(input_dim=20, num_train=8, num_test=5)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["train_inputs"] is datamodule.train_inputs
    assert batch["test_labels"] is datamodule.test_labels


@pytest.mark.parametrize(
    ("setting", "value", "allowed"),
    [
        ("flip_rate", 0.7, "[0, 0.5)"),
        ("flip_rate", 0.5, "[0, 0.5)"),
        ("flip_rate", -0.1, "[0, 0.5)"),
        ("flip_rate", float("nan"), "finite"),
        ("input_dim", 1, ">= 2"),
        ("num_train", 0, ">= 1"),
        ("num_test", 0, ">= 1"),
        ("num_seeds", 0, ">= 1"),
        ("mean_norm", -1.0, ">= 0"),
        ("mean_norm", float("inf"), "finite"),
    ],
)
def test_datamodule_rejects_bad_setting(setting, value, allowed):
    with pytest.raises(ValueError) as error:
        XORClusterDataModule(**{setting: value})
    message = str(error.value)
    assert f"data.{setting}" in message
    assert allowed in message
