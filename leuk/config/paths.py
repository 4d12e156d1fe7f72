"""Where the Hydra config tree lives, for a source checkout and for an installed wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def config_dir() -> Path:
    """Return the directory holding ``train.yaml``.

    A wheel ships ``conf/`` as ``leuk/conf`` (see ``pyproject.toml``); a source checkout or an
    editable install keeps it at the repository root, beside the package.
    """
    for candidate in (_PACKAGE_DIR / "conf", _PACKAGE_DIR.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"leuk's config tree (train.yaml) was found neither in {_PACKAGE_DIR / 'conf'} nor in "
        f"{_PACKAGE_DIR.parent / 'conf'}; reinstall the package (pip install .)."
    )
