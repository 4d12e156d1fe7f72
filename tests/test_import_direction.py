"""Imports point one way: entry points (``leuk.cli``) and the composition root build on the library
packages, never the reverse. The imports run in a fresh interpreter, so no other test's imports
can hide or fake a dependency."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers import PYTHON, REPO_ROOT, subprocess_env

# The library packages; every module below them is imported, so a submodule's import is checked too.
LIBRARY = ("leuk.models", "leuk.data", "leuk.preprocess")
ENTRY = (
    "leuk.cli",
    "leuk.composition",
    "leuk.train",
    "leuk.eval",
    "leuk.predict",
    "leuk.bench",
    "leuk.report",
)


@pytest.fixture(scope="module")
def loaded() -> dict[str, list[str]]:
    """In one fresh interpreter: every leuk module loaded after importing the library packages and
    all their submodules (``library``), the modules that walk imported (``walked``), and then the
    modules loaded after importing one entry point as well (``entry``, the check's own control)."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        f"names = {list(LIBRARY)!r}\n"
        "for pkg in list(names):\n"
        "    mod = importlib.import_module(pkg)\n"
        "    names += [m.name for m in pkgutil.walk_packages(mod.__path__, pkg + '.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "leuk_modules = lambda: sorted(m for m in sys.modules if m.startswith('leuk'))\n"
        "library = leuk_modules()\n"
        "importlib.import_module('leuk.cli.inspect')\n"
        "print(json.dumps({'walked': names, 'library': library, 'entry': leuk_modules()}))\n"
    )
    out = subprocess.run(
        [PYTHON, "-c", code], cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _entry(name: str) -> bool:
    return any(name == e or name.startswith(e + ".") for e in ENTRY)


def test_library_imports_no_entry_point(loaded: dict[str, list[str]]) -> None:
    # The walk reached the modules the entry points used to live in.
    assert {
        "leuk.data.datamodule",
        "leuk.data.inspect",
        "leuk.data.preview",
        "leuk.preprocess.timing",
    } <= set(loaded["walked"])
    library = loaded["library"]
    assert not [m for m in library if _entry(m)], (
        f"importing {LIBRARY} and their submodules loads {[m for m in library if _entry(m)]}"
    )


def test_the_check_sees_an_entry_point(loaded: dict[str, list[str]]) -> None:
    """The check can fail: importing an entry point is seen as such."""
    assert [m for m in loaded["entry"] if _entry(m)]
