"""``last.ckpt`` that always holds the weights after the latest epoch."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint


class LastEpochCheckpoint(ModelCheckpoint):
    """Writes ``<dirpath>/last.ckpt`` after every epoch, whatever the monitored metric did.

    Lightning 2.6's ``ModelCheckpoint(save_last=True)`` refreshes ``last.ckpt`` only in an epoch
    that also wrote a top-k checkpoint, so after a run whose best epoch came early it holds that
    epoch: ``test_checkpoint=last`` would test, and ``ckpt_path=.../last.ckpt`` resume from, the
    wrong weights. Monitoring nothing and keeping one file gives the latest epoch every time.
    """

    def __init__(self, dirpath: str, filename: str = "last", **kwargs: Any) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=None,
            save_top_k=1,
            save_last=False,
            enable_version_counter=False,
            auto_insert_metric_name=False,
            **kwargs,
        )
