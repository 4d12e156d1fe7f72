"""Callbacks leuk adds to every run (the configurable ones come from ``conf/callbacks``).

- ``TwoPhaseFinetuning``: the backbone frozen (BatchNorm statistics included) for the first
  epochs, then trained at its own learning rate.
- ``LossSchedule``: tells a loss that changes with the epoch (``set_epoch``) which epoch it is.
- ``TestOutputs``: every test prediction gathered across ranks, the confusion matrix, the plots.
- ``LastEpochCheckpoint``: ``last.ckpt``, the weights after the latest epoch (resume, test_checkpoint=last).
- ``CheckpointInfo``: what rebuilds the network from a checkpoint without Hydra.
- ``ThroughputMeter``: training images per second.
"""

from leuk.callbacks.checkpoint_info import CheckpointInfo
from leuk.callbacks.finetuning import TwoPhaseFinetuning, backbone_param_groups
from leuk.callbacks.last_checkpoint import LastEpochCheckpoint
from leuk.callbacks.loss_schedule import LossSchedule
from leuk.callbacks.test_outputs import TestOutputs, gather_outputs
from leuk.callbacks.throughput import ThroughputMeter

__all__ = [
    "CheckpointInfo",
    "LastEpochCheckpoint",
    "LossSchedule",
    "TestOutputs",
    "ThroughputMeter",
    "TwoPhaseFinetuning",
    "backbone_param_groups",
    "gather_outputs",
]
