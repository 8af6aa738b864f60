"""Noisy XOR cluster data and the full-batch LightningDataModule that serves it.

The distribution follows Xu, Wang, Frei, Vardi and Hu, "Benign Overfitting
and Grokking in ReLU Networks for XOR Cluster Data", ICLR 2024. Two orthogonal
means ``mu_1, mu_2`` in ``R^p`` have equal norm. A clean sample is a centre
drawn uniformly from ``{+mu_1, -mu_1, +mu_2, -mu_2}`` plus noise
``xi ~ N(0, I_p)``, labelled +1 for the clusters ``+-mu_1`` and -1 for ``+-mu_2``. Each training
label is flipped independently with probability ``eta``. Since ``x`` and ``-x``
carry the same clean label, no linear classifier beats chance.
"""

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from einops import rearrange
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_grok.validation import check_finite, check_range


@dataclass(frozen=True)
class XORSample:
    """Points drawn from the XOR cluster distribution.

    Attributes:
        inputs: ``(N, p)``.
        clean_labels: ``(N,)`` in ``{-1, +1}``.
        labels: ``(N,)``, the clean labels with a fraction ``eta`` flipped.
        flip_mask: ``(N,)``, ``True`` where the label was flipped.
    """

    inputs: Tensor
    clean_labels: Tensor
    labels: Tensor
    flip_mask: Tensor


def sample_cluster_means(input_dim: int, mean_norm: float, generator: torch.Generator) -> Tensor:
    """Draw a uniformly random orthonormal pair in ``R^p`` and scale it to ``mean_norm``.

    Returns:
        ``(2, p)`` float64, rows ``mu_1`` and ``mu_2``.
    """
    gaussian = torch.randn(input_dim, 2, generator=generator, dtype=torch.float64)
    orthonormal, triangular = torch.linalg.qr(gaussian)
    # QR is unique up to column signs. Fixing them by diag(R) makes the pair a
    # function of the Gaussian draw alone, so it is uniform over orthonormal pairs.
    orthonormal = orthonormal * torch.sign(torch.diagonal(triangular))
    return rearrange(orthonormal, "p k -> k p") * mean_norm


def sample_xor_clusters(
    means: Tensor, num_samples: int, flip_rate: float, generator: torch.Generator
) -> XORSample:
    """Draw ``num_samples`` points around ``{+-mu_1, +-mu_2}`` with flipped labels.

    Args:
        means: ``(2, p)`` float64, ``mu_1`` and ``mu_2``.
        num_samples: ``N``.
        flip_rate: ``eta``, the probability that a label is flipped.
        generator: the source of randomness; draws happen in a fixed order.

    Returns:
        An :class:`XORSample` in float64.
    """
    cluster = torch.randint(4, (num_samples,), generator=generator)  # 0: +mu_1, 1: -mu_1, 2: +mu_2, 3: -mu_2
    mean_index = cluster // 2
    sign = 1.0 - 2.0 * (cluster % 2).to(torch.float64)
    noise = torch.randn(num_samples, means.shape[1], generator=generator, dtype=torch.float64)
    inputs = sign[:, None] * means[mean_index] + noise  # (N, p)

    clean_labels = 1.0 - 2.0 * mean_index.to(torch.float64)  # +1 for +-mu_1, -1 for +-mu_2
    flip_mask = torch.rand(num_samples, generator=generator, dtype=torch.float64) < flip_rate
    labels = torch.where(flip_mask, -clean_labels, clean_labels)
    return XORSample(inputs=inputs, clean_labels=clean_labels, labels=labels, flip_mask=flip_mask)


# The tensors that the data fingerprint covers; the other attributes follow from them.
_FINGERPRINTED = ("cluster_means", "train_inputs", "train_labels", "flip_mask", "test_inputs", "test_labels")


class DataMismatchError(ValueError):
    """Raised when a checkpoint was trained on other data than the current settings draw."""


def check_data_settings(
    input_dim: int = 2,
    num_train: int = 1,
    num_test: int = 1,
    mean_norm: float | None = None,
    flip_rate: float = 0.0,
    seed: int = 0,
    num_seeds: int = 1,
) -> None:
    """Raise ``ValueError`` naming the first data setting out of its allowed range.

    The CLI calls this before the model settings, so that a linked setting such
    as ``data.num_seeds`` is reported under the name the user typed. The
    constructor of :class:`XORClusterDataModule` calls it too.
    """
    check_range("data.input_dim", input_dim, minimum=2, integer=True)
    check_range("data.num_train", num_train, minimum=1, integer=True)
    check_range("data.num_test", num_test, minimum=1, integer=True)
    check_range("data.num_seeds", num_seeds, minimum=1, integer=True)
    check_range("data.seed", seed, minimum=0, integer=True)
    if mean_norm is not None:
        check_range("data.mean_norm", mean_norm, minimum=0.0)
    check_finite("data.flip_rate", flip_rate)
    if not 0.0 <= flip_rate < 0.5:
        raise ValueError(f"data.flip_rate must be in [0, 0.5), got {flip_rate}")


class _RepeatedBatch(Dataset):
    """A dataset whose every item is the same full batch, so one item is one GD step."""

    def __init__(self, batch: dict[str, Tensor], length: int) -> None:
        self.batch = batch
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.batch


class XORClusterDataModule(pl.LightningDataModule):
    """Noisy XOR clusters for full-batch gradient descent, for ``S`` ensemble members.

    Member ``s`` of the ensemble draws its data from seed ``seed + s``, so member
    ``s`` of an ensemble trains on the same data as a single run with that seed. The
    data are drawn in float64 and stored in float64 under ``--trainer.precision
    64-true``, in float32 otherwise.

    After ``setup``, the tensors below are attributes; each has a leading ``S``:
    ``cluster_means`` ``(S, 2, p)``, ``train_inputs`` ``(S, n, p)``,
    ``train_labels`` (as trained on, flipped ones included), ``train_clean_labels``
    and ``flip_mask`` ``(S, n)``, ``test_inputs`` ``(S, n_test, p)``,
    ``test_labels`` (clean) and ``test_noisy_labels`` ``(S, n_test)``. Labels are
    in ``{-1, +1}``.

    The training dataloader yields the same full batch, a dict of the training
    and test tensors, once per GD step, with no collation. Under data parallelism
    each process gets its own shard of the points; see :meth:`full_batch`.

    Args:
        input_dim: the input dimension ``p``; at least 2, for two orthogonal means.
        num_train: the number of training points ``n``.
        num_test: the number of test points.
        mean_norm: ``||mu_1|| = ||mu_2||``; if ``None``, ``2.5 * sqrt(p / n)``, the
            ratio of the paper's experiments.
        flip_rate: ``eta``, the probability that a training label is flipped, in ``[0, 0.5)``.
        seed: the data seed of ensemble member 0.
        num_seeds: ``S``, the number of ensemble members.

    Raises:
        ValueError: naming the setting, its value and the allowed range.
    """

    def __init__(
        self,
        input_dim: int = 10000,
        num_train: int = 50,
        num_test: int = 500,
        mean_norm: float | None = None,
        flip_rate: float = 0.1,
        seed: int = 0,
        num_seeds: int = 1,
    ) -> None:
        super().__init__()
        check_data_settings(
            input_dim=input_dim, num_train=num_train, num_test=num_test, mean_norm=mean_norm,
            flip_rate=flip_rate, seed=seed, num_seeds=num_seeds,
        )
        # The model has a seed of its own, and Lightning rejects a run whose model and
        # data module log the same hyperparameter with different values. The data
        # seed stays in the CLI's saved config and in the checkpoint fingerprint.
        self.save_hyperparameters(ignore=["seed"])

        self.input_dim = input_dim
        self.num_train = num_train
        self.num_test = num_test
        self.mean_norm = 2.5 * math.sqrt(input_dim / num_train) if mean_norm is None else float(mean_norm)
        self.flip_rate = flip_rate
        self.seed = seed
        self.num_seeds = num_seeds
        self._dtype: torch.dtype | None = None
        self._fingerprint: str | None = None
        self._device_batch: tuple[Any, Any] | None = None

    def setup(self, stage: str) -> None:
        dtype = _precision_dtype(self.trainer)
        if self._dtype == dtype:
            return  # already drawn: data do not change between stages
        self._dtype = dtype
        self._fingerprint = None

        # Each member is drawn in float64 and cast before the next is drawn, so that
        # at most one member is held in float64 (3.2 GB for S = 100 at p = 40000).
        stacked: dict[str, Tensor] = {}
        for member in range(self.num_seeds):
            for name, tensor in self._draw_member(self.seed + member).items():
                if name not in stacked:
                    shape = (self.num_seeds, *tensor.shape)
                    stacked[name] = torch.empty(shape, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
                stacked[name][member] = tensor
        for name, tensor in stacked.items():
            setattr(self, name, tensor)

    def _draw_member(self, seed: int) -> dict[str, Tensor]:
        generator = torch.Generator().manual_seed(seed)
        means = sample_cluster_means(self.input_dim, self.mean_norm, generator)
        train = sample_xor_clusters(means, self.num_train, self.flip_rate, generator)
        test = sample_xor_clusters(means, self.num_test, self.flip_rate, generator)
        return {
            "cluster_means": means,
            "train_inputs": train.inputs,
            "train_labels": train.labels,
            "train_clean_labels": train.clean_labels,
            "flip_mask": train.flip_mask,
            "test_inputs": test.inputs,
            "test_labels": test.clean_labels,
            "test_noisy_labels": test.labels,
        }

    def fingerprint(self) -> str:
        """Return a SHA-256 digest (16 hex digits) of the drawn data, computed once after ``setup``."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for name in _FINGERPRINTED:
                digest.update(getattr(self, name).contiguous().cpu().numpy())  # hashed in place, no copy
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def state_dict(self) -> dict[str, Any]:
        """Store the data fingerprint and settings in checkpoints, to check them on resume."""
        return {"fingerprint": self.fingerprint(), "settings": {**self.hparams, "seed": self.seed}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Check that the data drawn from the current settings are those the checkpoint was trained on.

        Raises:
            DataMismatchError: naming both fingerprints and the checkpoint's data settings.
        """
        saved = state_dict.get("fingerprint")
        if saved is not None and saved != self.fingerprint():
            raise DataMismatchError(
                f"the checkpoint was trained on data with fingerprint {saved}, but the current data settings "
                f"draw data with fingerprint {self.fingerprint()}; resume with the checkpoint's data settings "
                f"{state_dict.get('settings')} (and the same precision)"
            )

    def full_batch(self) -> dict[str, Tensor]:
        """Return this process's training and test points as one batch, keyed as the module expects.

        On one process the batch contains the attributes themselves. Under data
        parallelism on ``W`` processes, process ``r`` gets points ``r, r + W, r + 2W, ...``
        of each split, and the batch adds ``train_index`` and ``test_index``, the
        positions of its points in the attributes. The attributes stay whole on
        every process, so the probes measure the full data.
        """
        rank, world_size = self._process_rank()
        if world_size == 1:
            return {
                "train_inputs": self.train_inputs,
                "train_labels": self.train_labels,
                "flip_mask": self.flip_mask,
                "test_inputs": self.test_inputs,
                "test_labels": self.test_labels,
                "test_noisy_labels": self.test_noisy_labels,
            }

        shard = slice(rank, None, world_size)  # strided views, no copies
        return {
            "train_inputs": self.train_inputs[:, shard],
            "train_labels": self.train_labels[:, shard],
            "flip_mask": self.flip_mask[:, shard],
            "train_index": torch.arange(self.num_train)[shard],
            "test_inputs": self.test_inputs[:, shard],
            "test_labels": self.test_labels[:, shard],
            "test_noisy_labels": self.test_noisy_labels[:, shard],
            "test_index": torch.arange(self.num_test)[shard],
        }

    def _process_rank(self) -> tuple[int, int]:
        """Return ``(global_rank, world_size)`` of this process, ``(0, 1)`` without a trainer."""
        if self.trainer is None:
            return 0, 1
        return int(self.trainer.global_rank), int(self.trainer.world_size)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # Every GD step gets the same full batch, so it is copied to an accelerator once.
        if device.type == "cpu":
            return batch
        key = (device, id(self.train_inputs))
        if self._device_batch is None or self._device_batch[0] != key:
            self._device_batch = (key, super().transfer_batch_to_device(batch, device, dataloader_idx))
        return self._device_batch[1]

    def train_dataloader(self) -> DataLoader:
        # One item per GD step of the whole run, so a single epoch spans the run
        # and the progress bar counts GD steps.
        num_steps = max(int(self.trainer.max_steps), 1) if self.trainer is not None else 1
        return _full_batch_loader(self.full_batch(), num_steps, self._process_rank()[1])

    def val_dataloader(self) -> DataLoader | list:
        if self.trainer is not None and self.trainer.state.fn == "fit":
            return []  # during fit the module measures the test split on its own step schedule
        return _full_batch_loader(self.full_batch(), 1, self._process_rank()[1])

    def test_dataloader(self) -> DataLoader:
        return _full_batch_loader(self.full_batch(), 1, self._process_rank()[1])


def _full_batch_loader(batch: dict[str, Tensor], length: int, world_size: int = 1) -> DataLoader:
    # batch_size=None turns off collation: the loader hands out the stored tensors as they are.
    dataset = _RepeatedBatch(batch, length)
    if world_size == 1:
        return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=0)
    # The batch is already this process's shard, so every process must see all
    # `length` items. Lightning splits the items of a loader between processes
    # unless its sampler is a DistributedSampler, and a sampler over one replica
    # yields every item.
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=False)
    return DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=0)


def _precision_dtype(trainer: "pl.Trainer | None") -> torch.dtype:
    precision = str(getattr(trainer, "precision", "32-true")) if trainer is not None else "32-true"
    return torch.float64 if precision.startswith("64") else torch.float32
