"""Deterministic preprocessing of each paper (computed once, cached with the decoded images) and
the image transforms the augmentation configs use.

``build_preprocess(cfg.preprocess.steps)`` gives a ``PreprocessPipeline`` of the named steps
(``{name: step node}``, in run order; a checkpoint's list from before steps had names also builds);
see ``base`` for the step interface.
"""

from leuk.preprocess.base import NotFittedError, PreprocessConfigError, PreprocessStep
from leuk.preprocess.pipeline import PreprocessPipeline, build_preprocess

__all__ = [
    "NotFittedError",
    "PreprocessConfigError",
    "PreprocessPipeline",
    "PreprocessStep",
    "build_preprocess",
]
