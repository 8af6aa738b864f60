"""The README's snippet for adding the probes to another project runs as written."""

import re
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from _events import read_scalars

README = Path(__file__).resolve().parents[1] / "README.md"
P, M, N, N_TEST = 20, 16, 24, 40


def _snippet() -> str:
    section = README.read_text().split("### Probes in another project", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def _xor(num_points: int, means: torch.Tensor, generator: torch.Generator):
    cluster = torch.randint(0, 4, (num_points,), generator=generator)
    sign = 1.0 - 2.0 * (cluster % 2).float()
    inputs = sign[:, None] * means[cluster // 2] + torch.randn(num_points, P, generator=generator)
    return inputs, 1.0 - 2.0 * (cluster // 2).float()


class MyData(LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.means = torch.zeros(2, P)
        self.means[0, 0] = self.means[1, 1] = 4.0
        self.x_train, clean = _xor(N, self.means, generator)
        self.flipped = torch.zeros(N, dtype=torch.bool)
        self.flipped[:3] = True
        self.y_train = torch.where(self.flipped, -clean, clean)
        self.x_test, self.y_test = _xor(N_TEST, self.means, generator)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x_train, self.y_train), batch_size=N)


class MyNetwork(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(P, M, bias=False), nn.ReLU(), nn.Linear(M, 1, bias=False))

    def training_step(self, batch, batch_idx):
        inputs, labels = batch
        outputs = self.net(inputs).squeeze(-1)
        self.log("train/acc", ((outputs > 0) == (labels > 0)).float().mean())
        with torch.no_grad():
            data = self.trainer.datamodule
            test_outputs = self.net(data.x_test).squeeze(-1)
            self.log("test/acc", ((test_outputs > 0) == (data.y_test > 0)).float().mean())
        return nn.functional.softplus(-labels * outputs).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_readme_probe_snippet_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"MyNetwork": MyNetwork, "MyData": MyData}
    exec(compile(_snippet(), str(README), "exec"), namespace)

    (run,) = (tmp_path / "lightning_logs").iterdir()
    scalars = read_scalars(run)
    assert sorted(scalars["alignment/pos_mu1"]) == list(range(101))
    assert sorted(scalars["margins/flipped_min"]) == list(range(101))
    assert 0.0 <= scalars["linear/share_test"][100] <= 1.0
    assert "milestones/memorized_step" in scalars
