import dataclasses

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from _events import read_scalars
from lightning_grok import DenseXORNetwork, SpanXORNetwork, XORClusterDataModule
from lightning_grok.span import span_row_norms
from probes import FlippedMargins, LinearComponent, NeuronAlignment
from probes.snapshot import dense_snapshot

# A problem where the weights move well away from W(0) and many ReLUs switch
# within 100 steps, so the trajectories are compared through the nonlinearity.
SIZES = dict(input_dim=300, num_train=12, num_test=10, num_seeds=2)
MODEL = dict(width=20, init_scale=0.1, lr=5.0, seed=3)
NUM_STEPS = 100


def _datamodule(input_dim=300, num_train=12, num_test=10, num_seeds=2):
    # The data seed equals the model seed because Lightning rejects a run with a
    # logger when the module and the data module save different `seed` hparams.
    return XORClusterDataModule(
        input_dim=input_dim,
        num_train=num_train,
        num_test=num_test,
        flip_rate=0.2,
        seed=MODEL["seed"],
        num_seeds=num_seeds,
    )


def _model(cls, input_dim=300, num_seeds=2, **settings):
    return cls(input_dim=input_dim, num_seeds=num_seeds, **(MODEL | settings))


def _trainer(root, max_steps, precision="64-true", logger=False, callbacks=None):
    return pl.Trainer(
        max_steps=max_steps,
        precision=precision,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
    )


class _RecordTrainedState(pl.Callback):
    """Record the trained tensor after every step t = 0, ..., T: W(t) for dense, C(t) for span."""

    def __init__(self):
        self.states = []

    def on_train_start(self, trainer, pl_module):
        self._record(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._record(pl_module)

    def _record(self, pl_module):
        trained = pl_module.coefficients if isinstance(pl_module, SpanXORNetwork) else pl_module.hidden_weight
        self.states.append(trained.detach().clone())


def _span_weights(span, datamodule, coefficients):
    """Materialize W = W(0) + C X for each recorded C, independently of SpanXORNetwork."""
    initial = torch.stack([span.initial_hidden_weights(member).float().double() for member in range(span.num_seeds)])
    return [initial + torch.einsum("smn,snp->smp", state, datamodule.train_inputs) for state in coefficients]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # On these tiny tensors intra-op threads cost more than they save, several
    # times over on a loaded machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory, _one_thread):
    """Train dense and span GD from the same seeds for NUM_STEPS steps, recording each step and the logs."""
    runs = {}
    for name, cls in (("dense", DenseXORNetwork), ("span", SpanXORNetwork)):
        root = tmp_path_factory.mktemp(name)
        logger = TensorBoardLogger(root, name="run", version=0)
        recorder = _RecordTrainedState()
        datamodule, module = _datamodule(**SIZES), _model(cls)
        # The probes read the dense weights directly and the span module through probe_snapshot.
        probes = [NeuronAlignment(every=10, histograms=False), LinearComponent(every=10), FlippedMargins(every=10)]
        _trainer(root, NUM_STEPS, logger=logger, callbacks=[recorder, *probes]).fit(module, datamodule)
        runs[name] = dict(module=module, datamodule=datamodule, states=recorder.states,
                          scalars=read_scalars(logger.log_dir))
    return runs


def test_span_weights_follow_dense_gd(side_by_side):
    span_run = side_by_side["span"]
    dense = side_by_side["dense"]["states"]
    span = _span_weights(span_run["module"], span_run["datamodule"], span_run["states"])
    assert len(dense) == len(span) == NUM_STEPS + 1
    assert torch.equal(span_run["module"].hidden_weight_matrix(), span[-1])

    for step, (expected, actual) in enumerate(zip(dense, span)):
        error = (actual - expected).abs().max() / expected.abs().max()
        assert error < 1e-10, f"step {step}: relative error {error:.2e}"

    # The comparison is only meaningful if GD moved W(t) far from W(0).
    moved = (dense[-1] - dense[0]).norm() / dense[0].norm()
    assert moved > 1.0


def test_span_logs_same_values_as_dense(side_by_side):
    dense, span = side_by_side["dense"]["scalars"], side_by_side["span"]["scalars"]
    assert sorted(span) == sorted(dense)
    assert sorted(span["train/acc"]) == list(range(NUM_STEPS + 1))
    for probe_tag in ("alignment/pos_mu1", "linear/share_train", "linear/acc_test", "margins/flipped_min"):
        assert probe_tag in span

    for tag in dense:
        assert span[tag].keys() == dense[tag].keys(), tag
        for step, value in dense[tag].items():
            if "acc" in tag:
                assert span[tag][step] == value, (tag, step)
            else:
                assert span[tag][step] == pytest.approx(value, rel=1e-6), (tag, step)


def test_span_probe_snapshot_matches_dense(side_by_side):
    span, datamodule = side_by_side["span"]["module"], side_by_side["span"]["datamodule"]
    expected = dense_snapshot(
        span.hidden_weight_matrix(),
        span.output_weight,
        datamodule.cluster_means,
        datamodule.train_inputs,
        datamodule.test_inputs,
    )
    actual = span.probe_snapshot()

    for field in dataclasses.fields(expected):
        want, got = getattr(expected, field.name), getattr(actual, field.name)
        assert got.shape == want.shape, field.name
        assert got.dtype == torch.float64, field.name
        error = (got - want).abs().max() / want.abs().max()
        assert error < 1e-10, f"{field.name}: relative error {error:.2e}"


def test_span_first_step_is_minus_lr_gradient(tmp_path):
    datamodule, span = _datamodule(), _model(SpanXORNetwork)
    _trainer(tmp_path, max_steps=1).fit(span, datamodule)

    # G(0) = dL/dZ at Z(0) = W(0) X^T, here from autograd on the dense network.
    initial = torch.stack([span.initial_hidden_weights(member).float().double() for member in range(2)])
    preactivations = torch.einsum("smp,snp->smn", initial, datamodule.train_inputs).requires_grad_()
    outputs = torch.einsum("sm,smn->sn", span.output_weight, torch.relu(preactivations))
    F.softplus(-datamodule.train_labels * outputs).mean(dim=-1).sum().backward()

    expected = -MODEL["lr"] * preactivations.grad
    assert expected.abs().max() > 0
    assert torch.allclose(span.coefficients.detach(), expected, rtol=1e-12, atol=0)


class _LargestTensor(TorchDispatchMode):
    """Record the largest number of elements of any tensor an operator returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in tree_flatten(result)[0]:
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return result


def _held_tensors(value, seen=None):
    """Yield every tensor reachable from a module's attributes, dataclasses and containers."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, torch.nn.Module):
        yield from value.state_dict().values()
        for attribute, item in vars(value).items():
            if attribute not in ("_trainer", "_parameters", "_buffers", "_modules"):
                yield from _held_tensors(item, seen)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from _held_tensors(getattr(value, field.name), seen)
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            yield from _held_tensors(item, seen)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _held_tensors(item, seen)


def test_span_never_creates_full_weight_tensor(tmp_path):
    # m = 50 > n = 10, so only the (S, m, p) weights reach S m p elements; the
    # (S, n, p) data and one member's (m, p) draw stay below it.
    sizes = dict(input_dim=2000, num_train=10, num_test=10, num_seeds=3)
    full_size = 3 * 50 * 2000

    modules, largest = {}, {}
    for name, cls in (("dense", DenseXORNetwork), ("span", SpanXORNetwork)):
        datamodule = _datamodule(**sizes)
        trainer = _trainer(tmp_path, max_steps=2, precision="32-true")
        with _LargestTensor() as recorder:
            modules[name] = _model(cls, input_dim=2000, num_seeds=3, width=50, init_scale=1e-3, lr=1e-3)
            trainer.fit(modules[name], datamodule)
            if name == "span":
                modules[name].probe_snapshot()
        largest[name] = recorder.largest

    assert largest["dense"] >= full_size  # the recorder catches the dense weights
    assert largest["span"] >= 50 * 2000  # and the span module's draw of one member's W(0)
    assert largest["span"] < full_size
    largest_stored = max(tensor.numel() for tensor in _held_tensors(modules["span"]))
    assert largest_stored < 50 * 2000


@pytest.mark.parametrize(("precision", "factor"), [("64-true", 2.0**-40), ("32-true", 2.0**-80)])
def test_span_snapshot_scales_with_weights(tmp_path, precision, factor):
    # A power of two scales every rounding exactly, so W(0) * factor is exactly
    # the draw with init_scale * factor. At 2^-80 in float32 the weights are
    # about 1e-25 and their squares underflow to zero.
    snapshots = []
    trained = None
    for scale in (1.0, factor):
        datamodule = _datamodule()
        span = _model(SpanXORNetwork, init_scale=MODEL["init_scale"] * scale)
        trainer = _trainer(tmp_path, max_steps=5, precision=precision)
        trainer.fit(span, datamodule)
        if trained is None:
            trained = span.coefficients.detach().clone()
        else:
            span.coefficients.data.copy_(trained * scale)
        snapshots.append(span.probe_snapshot())

    reference, scaled = snapshots
    tolerance = 1e-12 if precision == "64-true" else 1e-5
    for name in ("neuron_norms", "linear_norm", "mean_projections", "train_preactivations"):
        want = getattr(reference, name)
        got = getattr(scaled, name) / factor
        assert torch.allclose(got, want, rtol=tolerance, atol=0), name
    assert scaled.neuron_norms.min() > 0


def test_span_row_norms_match_direct_norms():
    generator = torch.Generator().manual_seed(0)
    initial = torch.randn(2, 4, 30, generator=generator, dtype=torch.float64)
    inputs = torch.randn(2, 6, 30, generator=generator, dtype=torch.float64)
    coefficients = torch.randn(2, 4, 6, generator=generator, dtype=torch.float64)
    coefficients[0, 0] = 0.0
    initial[1, 1] = 0.0

    gram = torch.einsum("sip,skp->sik", inputs, inputs)
    norms = span_row_norms(
        initial.norm(dim=-1),
        torch.einsum("srp,sip->sri", initial, inputs),
        coefficients,
        torch.einsum("sri,sik->srk", coefficients, gram),
        inputs.norm(dim=-1),
    )
    expected = (initial + torch.einsum("sri,sip->srp", coefficients, inputs)).norm(dim=-1)
    assert torch.allclose(norms, expected, rtol=1e-12, atol=0)


def test_span_resume_continues_trajectory(tmp_path):
    straight = _model(SpanXORNetwork)
    _trainer(tmp_path, max_steps=6).fit(straight, _datamodule())

    first = _model(SpanXORNetwork)
    trainer = _trainer(tmp_path, max_steps=3)
    trainer.fit(first, _datamodule())
    checkpoint = tmp_path / "three_steps.ckpt"
    trainer.save_checkpoint(checkpoint)

    resumed = _model(SpanXORNetwork)
    _trainer(tmp_path, max_steps=6).fit(resumed, _datamodule(), ckpt_path=checkpoint)
    assert resumed.global_step == 6
    assert torch.allclose(resumed.coefficients, straight.coefficients, rtol=1e-12, atol=0)

    loaded = SpanXORNetwork.load_from_checkpoint(checkpoint)
    assert torch.equal(loaded.coefficients, first.coefficients.detach())


def test_span_rejects_use_without_data_module():
    span = _model(SpanXORNetwork)
    with pytest.raises(RuntimeError, match="configure_model"):
        span.probe_snapshot()
    span.configure_model()  # as load_from_checkpoint calls it: no data module, so no C yet
    assert span.coefficients is None
    with pytest.raises(RuntimeError, match="configure_model"):
        span.hidden_weight_matrix()


def test_span_rejects_batch_of_other_data(side_by_side):
    span = side_by_side["span"]["module"]
    batch = side_by_side["span"]["datamodule"].full_batch()
    batch["test_inputs"] = batch["test_inputs"][:, :3]
    with pytest.raises(ValueError, match=r"\(S, N\) = \(2, 10\)"):
        span.split_outputs(batch, "test")
