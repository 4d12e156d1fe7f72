"""``python -m leuk.predict``: the prediction entry point, now ``leuk.cli.predict``."""

from leuk.cli.predict import find_images, main, predict  # noqa: F401

if __name__ == "__main__":
    main()
