"""Reusable Lightning callbacks that probe two-layer ReLU networks trained on XOR cluster data.

The probes read the network through :class:`ProbeAccess`, so they work with
any LightningModule whose weights and data can be named by attribute paths.
"""

from probes._base import last_training_step
from probes.callbacks import CustomScalarsLayout, FlippedMargins, LinearComponent, Milestones, NeuronAlignment
from probes.schedule import StepSchedule
from probes.snapshot import ClusterData, NetworkSnapshot, ProbeAccess, cluster_data, dense_snapshot

__all__ = [
    "ClusterData",
    "CustomScalarsLayout",
    "FlippedMargins",
    "LinearComponent",
    "Milestones",
    "NetworkSnapshot",
    "NeuronAlignment",
    "ProbeAccess",
    "StepSchedule",
    "cluster_data",
    "dense_snapshot",
    "last_training_step",
]
