"""Imports point one way: entry points (``leuk.cli``) and the composition root build on the library
packages, never the reverse. Each import runs in a fresh interpreter, so no other test's imports
can hide or fake a dependency."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers import PYTHON, REPO_ROOT, subprocess_env

LIBRARY = ("leuk.models", "leuk.data", "leuk.preprocess")
# Every module of the library packages, so that a submodule's import is checked too.
LIBRARY_MODULES = (
    *LIBRARY,
    "leuk.data.datamodule",
    "leuk.data.inspect",
    "leuk.data.preview",
    "leuk.data.timing",
    "leuk.preprocess.timing",
)
ENTRY = (
    "leuk.cli",
    "leuk.composition",
    "leuk.train",
    "leuk.eval",
    "leuk.predict",
    "leuk.bench",
    "leuk.report",
)


def _loaded_after_import(module: str) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('leuk'))))\n"
    )
    out = subprocess.run(
        [PYTHON, "-c", code], cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _entry(name: str) -> bool:
    return any(name == e or name.startswith(e + ".") for e in ENTRY)


@pytest.mark.parametrize("module", LIBRARY_MODULES)
def test_library_imports_no_entry_point(module: str) -> None:
    loaded = _loaded_after_import(module)
    assert module in loaded
    assert not [m for m in loaded if _entry(m)], (
        f"importing {module} loads {[m for m in loaded if _entry(m)]}"
    )


def test_the_check_sees_an_entry_point() -> None:
    """The check can fail: importing an entry point is seen as such."""
    loaded = _loaded_after_import("leuk.cli.inspect")
    assert [m for m in loaded if _entry(m)]
