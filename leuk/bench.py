"""``python -m leuk.bench``: the benchmark, now ``leuk.cli.bench``."""

from leuk.benchmark import epochs as _epochs  # noqa: F401  (old imports)
from leuk.cli.bench import bench, main  # noqa: F401
from leuk.latency import measure_inference  # noqa: F401

if __name__ == "__main__":
    main()
