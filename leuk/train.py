"""``python -m leuk.train``: the training entry point, now ``leuk.cli.train``."""

from leuk.checkpoints import CheckpointMismatchError, check_checkpoint  # noqa: F401  (old imports)
from leuk.cli.train import main, train  # noqa: F401
from leuk.composition import build_datamodule, build_module  # noqa: F401
from leuk.composition import build_module as build_classifier  # noqa: F401
from leuk.run_summary import image_metrics_on_test  # noqa: F401

if __name__ == "__main__":
    main()
