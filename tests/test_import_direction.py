"""Imports point one way: entry points (``leuk.cli``) and the composition root build on the library
packages, never the reverse. Each import runs in a fresh interpreter, so no other test's imports
can hide or fake a dependency."""

from __future__ import annotations

import json
import subprocess

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


def _loaded_after_import(*modules: str, walk: bool = False) -> tuple[list[str], list[str]]:
    """(the modules imported, every leuk module then loaded) in one fresh interpreter; ``walk``: also
    every submodule of the given packages."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        f"names = {list(modules)!r}\n"
        f"if {walk!r}:\n"
        "    for pkg in list(names):\n"
        "        mod = importlib.import_module(pkg)\n"
        "        names += [m.name for m in pkgutil.walk_packages(mod.__path__, pkg + '.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps([names, sorted(m for m in sys.modules if m.startswith('leuk'))]))\n"
    )
    out = subprocess.run(
        [PYTHON, "-c", code], cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, check=True
    )
    imported, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    return imported, loaded


def _entry(name: str) -> bool:
    return any(name == e or name.startswith(e + ".") for e in ENTRY)


def test_library_imports_no_entry_point() -> None:
    imported, loaded = _loaded_after_import(*LIBRARY, walk=True)
    # The walk reached the modules the entry points used to live in.
    assert {
        "leuk.data.datamodule",
        "leuk.data.inspect",
        "leuk.data.preview",
        "leuk.preprocess.timing",
    } <= set(imported)
    assert not [m for m in loaded if _entry(m)], (
        f"importing {LIBRARY} and their submodules loads {[m for m in loaded if _entry(m)]}"
    )


def test_the_check_sees_an_entry_point() -> None:
    """The check can fail: importing an entry point is seen as such."""
    _, loaded = _loaded_after_import("leuk.cli.inspect")
    assert [m for m in loaded if _entry(m)]
