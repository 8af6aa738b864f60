"""Benign overfitting and grokking of two-layer ReLU networks on noisy XOR clusters, in PyTorch Lightning."""

from lightning_grok.data import XORClusterDataModule, sample_cluster_means, sample_xor_clusters
from lightning_grok.model import DenseXORNetwork, XORNetwork
from lightning_grok.span import SpanXORNetwork

__all__ = [
    "DenseXORNetwork",
    "SpanXORNetwork",
    "XORClusterDataModule",
    "XORNetwork",
    "sample_cluster_means",
    "sample_xor_clusters",
]
