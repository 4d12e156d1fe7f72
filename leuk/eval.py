"""``python -m leuk.eval``: the evaluation entry point, now ``leuk.cli.eval``."""

from leuk.cli.eval import evaluate, main  # noqa: F401

if __name__ == "__main__":
    main()
