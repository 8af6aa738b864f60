"""Tests of probes.functional against hand computations with explicit loops in float64."""

import math

import pytest
import torch

from probes import functional as F
from probes.snapshot import cluster_data, dense_snapshot

S, M, P, N, N_TEST = 2, 5, 4, 6, 7


def relu(z: float) -> float:
    return max(z, 0.0)


def dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v))


def norm(u: list[float]) -> float:
    return math.sqrt(dot(u, u))


@pytest.fixture
def problem() -> dict[str, torch.Tensor]:
    """A tiny ensemble: weights, output weights of both signs, orthogonal means, inputs, labels, flips."""
    generator = torch.Generator().manual_seed(0)
    means = torch.zeros(S, 2, P, dtype=torch.float64)
    means[:, 0, 0] = 2.0
    means[:, 1, 1] = 3.0
    flip_mask = torch.zeros(S, N, dtype=torch.bool)
    flip_mask[0, [1, 4]] = True
    flip_mask[1, 2] = True
    return {
        "hidden": torch.randn(S, M, P, generator=generator, dtype=torch.float64),
        "output": torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0], [-1.0, -1.0, 1.0, 1.0, -1.0]], dtype=torch.float64) / math.sqrt(M),
        "means": means,
        "train_inputs": torch.randn(S, N, P, generator=generator, dtype=torch.float64),
        "train_labels": torch.tensor([[1, -1, 1, 1, -1, -1], [-1, 1, 1, -1, 1, -1]], dtype=torch.float64),
        "flip_mask": flip_mask,
        "test_inputs": torch.randn(S, N_TEST, P, generator=generator, dtype=torch.float64),
        "test_labels": torch.tensor([[1, -1, 1, -1, 1, -1, 1], [1, 1, -1, -1, 1, 1, -1]], dtype=torch.float64),
    }


def lists(tensor: torch.Tensor) -> list:
    return tensor.tolist()


def test_mean_cosines_match_loops(problem):
    snapshot = dense_snapshot(problem["hidden"], problem["output"], problem["means"], problem["train_inputs"], problem["test_inputs"])
    data = cluster_data(problem["means"], problem["train_inputs"], problem["train_labels"], problem["flip_mask"], problem["test_labels"])
    cosines = F.mean_cosines(snapshot.mean_projections, snapshot.neuron_norms, data.mean_norms)

    hidden, means = lists(problem["hidden"]), lists(problem["means"])
    for s in range(S):
        for j in range(M):
            for k in range(2):
                expected = dot(hidden[s][j], means[s][k]) / (norm(hidden[s][j]) * norm(means[s][k]))
                assert cosines[s, j, k].item() == pytest.approx(expected, rel=1e-12)


def test_alignment_by_sign_matches_loops(problem):
    snapshot = dense_snapshot(problem["hidden"], problem["output"], problem["means"], problem["train_inputs"], problem["test_inputs"])
    data = cluster_data(problem["means"], problem["train_inputs"], problem["train_labels"], problem["flip_mask"], problem["test_labels"])
    cosines = F.mean_cosines(snapshot.mean_projections, snapshot.neuron_norms, data.mean_norms)
    alignment = F.alignment_by_sign(cosines, snapshot.output_weights)

    hidden, means, output = lists(problem["hidden"]), lists(problem["means"]), lists(problem["output"])
    for s in range(S):
        for group, sign in enumerate((1, -1)):
            for k in range(2):
                chosen = [j for j in range(M) if output[s][j] * sign > 0]
                values = [abs(dot(hidden[s][j], means[s][k])) / (norm(hidden[s][j]) * norm(means[s][k])) for j in chosen]
                assert alignment[s, group, k].item() == pytest.approx(sum(values) / len(values), rel=1e-12)


def test_alignment_empty_group_and_zero_neuron():
    cosines = torch.tensor([[[0.5, -0.2], [float("nan"), float("nan")], [-0.1, 0.9]]], dtype=torch.float64)
    output_weights = torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.float64)
    alignment = F.alignment_by_sign(cosines, output_weights)

    assert alignment[0, 0].tolist() == pytest.approx([0.3, 0.55])
    assert torch.isnan(alignment[0, 1]).all()


def test_mean_cosines_zero_neuron_is_nan():
    cosines = F.mean_cosines(
        torch.zeros(1, 1, 2, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    )
    assert torch.isnan(cosines).all()


def test_network_parts_match_loops(problem):
    snapshot = dense_snapshot(problem["hidden"], problem["output"], problem["means"], problem["train_inputs"], problem["test_inputs"])
    outputs = F.network_outputs(snapshot.train_preactivations, snapshot.output_weights)
    linear = F.linear_part(snapshot.train_preactivations, snapshot.output_weights)
    even = F.even_part(snapshot.train_preactivations, snapshot.output_weights)

    hidden, output, inputs = lists(problem["hidden"]), lists(problem["output"]), lists(problem["train_inputs"])
    for s in range(S):
        v = [0.5 * sum(output[s][j] * hidden[s][j][q] for j in range(M)) for q in range(P)]
        for i in range(N):
            expected_output = sum(output[s][j] * relu(dot(hidden[s][j], inputs[s][i])) for j in range(M))
            expected_even = 0.5 * sum(output[s][j] * abs(dot(hidden[s][j], inputs[s][i])) for j in range(M))
            assert outputs[s, i].item() == pytest.approx(expected_output, rel=1e-12, abs=1e-14)
            assert linear[s, i].item() == pytest.approx(dot(v, inputs[s][i]), rel=1e-12, abs=1e-14)
            assert even[s, i].item() == pytest.approx(expected_even, rel=1e-12, abs=1e-14)
    torch.testing.assert_close(linear + even, outputs)


def test_linear_share_matches_loops(problem):
    snapshot = dense_snapshot(problem["hidden"], problem["output"], problem["means"], problem["train_inputs"], problem["test_inputs"])
    linear = F.linear_part(snapshot.test_preactivations, snapshot.output_weights)
    even = F.even_part(snapshot.test_preactivations, snapshot.output_weights)
    share = F.linear_share(linear, even)

    for s in range(S):
        linear_energy = sum(value**2 for value in linear[s].tolist())
        even_energy = sum(value**2 for value in even[s].tolist())
        assert share[s].item() == pytest.approx(linear_energy / (linear_energy + even_energy), rel=1e-12)


def test_linear_share_worked_example():
    # linear energy 3^2 + 0^2 = 9, even energy 0^2 + 4^2 = 16, so the share is 9 / 25.
    share = F.linear_share(torch.tensor([[3.0, 0.0]], dtype=torch.float64), torch.tensor([[0.0, 4.0]], dtype=torch.float64))
    assert share.item() == pytest.approx(0.36, rel=1e-15)


def test_linear_share_all_zero_is_nan():
    zeros = torch.zeros(1, 3, dtype=torch.float64)
    assert torch.isnan(F.linear_share(zeros, zeros)).all()


def test_sign_accuracy_counts_zero_as_error():
    scores = torch.tensor([[2.0, -1.0, 0.0, 3.0]])
    labels = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    assert F.sign_accuracy(scores, labels).item() == pytest.approx(0.5)


def test_norm_ratio_and_label_cosine_match_loops(problem):
    snapshot = dense_snapshot(problem["hidden"], problem["output"], problem["means"], problem["train_inputs"], problem["test_inputs"])
    data = cluster_data(problem["means"], problem["train_inputs"], problem["train_labels"], problem["flip_mask"], problem["test_labels"])
    train_linear = F.linear_part(snapshot.train_preactivations, snapshot.output_weights)
    ratio = F.linear_norm_ratio(snapshot.linear_norm, snapshot.frobenius_norm)
    cosine = F.label_sum_cosine(train_linear, data.train_labels, snapshot.linear_norm, data.label_sum_norm)

    hidden, output = lists(problem["hidden"]), lists(problem["output"])
    inputs, labels = lists(problem["train_inputs"]), lists(problem["train_labels"])
    for s in range(S):
        v = [0.5 * sum(output[s][j] * hidden[s][j][q] for j in range(M)) for q in range(P)]
        frobenius = math.sqrt(sum(value**2 for row in hidden[s] for value in row))
        label_sum = [sum(labels[s][i] * inputs[s][i][q] for i in range(N)) for q in range(P)]
        assert ratio[s].item() == pytest.approx(norm(v) / frobenius, rel=1e-12)
        assert cosine[s].item() == pytest.approx(dot(v, label_sum) / (norm(v) * norm(label_sum)), rel=1e-12)


def test_margins_match_loops(problem):
    snapshot = dense_snapshot(problem["hidden"], problem["output"], problem["means"], problem["train_inputs"], problem["test_inputs"])
    data = cluster_data(problem["means"], problem["train_inputs"], problem["train_labels"], problem["flip_mask"], problem["test_labels"])
    outputs = F.network_outputs(snapshot.train_preactivations, snapshot.output_weights)
    margins = F.normalized_margins(outputs, data.train_labels, snapshot.frobenius_norm)

    hidden, output = lists(problem["hidden"]), lists(problem["output"])
    inputs, labels, flips = lists(problem["train_inputs"]), lists(problem["train_labels"]), lists(problem["flip_mask"])
    for s in range(S):
        frobenius = math.sqrt(sum(value**2 for row in hidden[s] for value in row))
        expected = [
            labels[s][i] * sum(output[s][j] * relu(dot(hidden[s][j], inputs[s][i])) for j in range(M)) / frobenius
            for i in range(N)
        ]
        flipped = [expected[i] for i in range(N) if flips[s][i]]
        unflipped = [expected[i] for i in range(N) if not flips[s][i]]
        assert margins[s].tolist() == pytest.approx(expected, rel=1e-12, abs=1e-14)
        assert F.masked_min(margins, data.flip_mask)[s].item() == pytest.approx(min(flipped), rel=1e-12)
        assert F.masked_mean(margins, data.flip_mask)[s].item() == pytest.approx(sum(flipped) / len(flipped), rel=1e-12)
        assert F.masked_min(margins, ~data.flip_mask)[s].item() == pytest.approx(min(unflipped), rel=1e-12)
        assert F.masked_mean(margins, ~data.flip_mask)[s].item() == pytest.approx(sum(unflipped) / len(unflipped), rel=1e-12)


def test_masked_stats_empty_mask_is_nan():
    values = torch.tensor([[1.0, 2.0], [3.0, -4.0]], dtype=torch.float64)
    mask = torch.tensor([[False, False], [True, True]])

    assert torch.isnan(F.masked_min(values, mask)[0])
    assert torch.isnan(F.masked_mean(values, mask)[0])
    assert F.masked_min(values, mask)[1].item() == -4.0
    assert F.masked_mean(values, mask)[1].item() == -0.5


def test_plane_outputs_match_full_network(problem):
    # For a point c_1 e_1 + c_2 e_2 of the plane, the plane formula equals the network on that point.
    snapshot = dense_snapshot(problem["hidden"], problem["output"], problem["means"], problem["train_inputs"], problem["test_inputs"])
    data = cluster_data(problem["means"], problem["train_inputs"], problem["train_labels"], problem["flip_mask"], problem["test_labels"])
    neurons = F.plane_coordinates(snapshot.mean_projections, data.mean_norms)
    points = torch.tensor([[1.0, 0.0], [-0.5, 2.0], [0.3, -1.7]], dtype=torch.float64)
    on_plane = F.plane_network_outputs(neurons, snapshot.output_weights, points)

    unit_means = problem["means"] / problem["means"].norm(dim=-1, keepdim=True)  # (S, 2, P)
    hidden, output = lists(problem["hidden"]), lists(problem["output"])
    for s in range(S):
        for g, (c1, c2) in enumerate(points.tolist()):
            x = (c1 * unit_means[s, 0] + c2 * unit_means[s, 1]).tolist()
            expected = sum(output[s][j] * relu(dot(hidden[s][j], x)) for j in range(M))
            assert on_plane[s, g].item() == pytest.approx(expected, rel=1e-12, abs=1e-14)


def all_scalars(problem: dict[str, torch.Tensor], weight_scale: float, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Compute every scalar the probes log, with all hidden weights multiplied by ``weight_scale``."""
    cast = {name: value.to(dtype) if value.is_floating_point() else value for name, value in problem.items()}
    snapshot = dense_snapshot(cast["hidden"] * weight_scale, cast["output"], cast["means"], cast["train_inputs"], cast["test_inputs"])
    data = cluster_data(cast["means"], cast["train_inputs"], cast["train_labels"], cast["flip_mask"], cast["test_labels"])
    output_weights = snapshot.output_weights

    cosines = F.mean_cosines(snapshot.mean_projections, snapshot.neuron_norms, data.mean_norms)
    alignment = F.alignment_by_sign(cosines, output_weights)
    train_linear = F.linear_part(snapshot.train_preactivations, output_weights)
    train_even = F.even_part(snapshot.train_preactivations, output_weights)
    test_linear = F.linear_part(snapshot.test_preactivations, output_weights)
    test_even = F.even_part(snapshot.test_preactivations, output_weights)
    outputs = F.network_outputs(snapshot.train_preactivations, output_weights)
    margins = F.normalized_margins(outputs, data.train_labels, snapshot.frobenius_norm)
    return {
        "alignment": alignment.flatten(),
        "share_train": F.linear_share(train_linear, train_even),
        "share_test": F.linear_share(test_linear, test_even),
        "linear_acc": F.sign_accuracy(test_linear, data.test_labels),
        "even_acc": F.sign_accuracy(test_even, data.test_labels),
        "norm_ratio": F.linear_norm_ratio(snapshot.linear_norm, snapshot.frobenius_norm),
        "cos_label_sum": F.label_sum_cosine(train_linear, data.train_labels, snapshot.linear_norm, data.label_sum_norm),
        "flipped_min": F.masked_min(margins, data.flip_mask),
        "flipped_mean": F.masked_mean(margins, data.flip_mask),
        "unflipped_min": F.masked_min(margins, ~data.flip_mask),
        "unflipped_mean": F.masked_mean(margins, ~data.flip_mask),
    }


@pytest.mark.parametrize(
    ("dtype", "base_scale", "rel"),
    [(torch.float64, 1.0, 1e-10), (torch.float64, 1e-13, 1e-10), (torch.float32, 1e-13, 1e-4)],
)
def test_scalars_unchanged_by_tiny_weights(problem, dtype, base_scale, rel):
    reference = all_scalars(problem, base_scale, dtype)
    scaled = all_scalars(problem, base_scale * 1e-12, dtype)

    for name, values in reference.items():
        assert torch.isfinite(values).all(), name
        torch.testing.assert_close(scaled[name], values, rtol=rel, atol=0, msg=lambda text, name=name: f"{name}: {text}")
