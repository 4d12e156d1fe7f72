"""``python -m leuk.bench``: the benchmark, now ``leuk.cli.bench``."""

from leuk.cli.bench import _epochs, bench, main, measure_inference  # noqa: F401  (old imports)

if __name__ == "__main__":
    main()
