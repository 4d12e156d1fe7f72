"""Locating, composing and validating leuk's Hydra configs."""

from leuk.config.paths import config_dir

__all__ = ["config_dir"]
