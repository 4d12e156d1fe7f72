"""The commands as a user meets them: user errors said once, `--help`, Trainer keys without `+`,
a model's minimum input size, the console scripts, and the Dockerfile's package index."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from hydra.errors import InstantiationException
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.profilers import SimpleProfiler

from leuk.checkpoints import CheckpointError
from leuk.cli.errors import JobUserError, user_errors
from leuk.composition import build_trainer
from leuk.config import config_dir
from leuk.config.validate import ConfigError
from leuk.data.sources import DataError
from leuk.models.registry import create_model
from leuk.utils.errors import UserConfigError, UserError, user_error_in
from leuk.utils.task import FAILED_FILE, task_wrapper
from tests.helpers import PYTHON, REPO_ROOT, TINY, TINY_LOADER, compose_config, subprocess_env

# Runs each (name, module, argv) as `python -m <module> <argv>` would, one after the other in one
# interpreter (one import of torch and Lightning for them all), each section of stdout and stderr
# opened by a marker line; prints every exit status at the end.
_DRIVER = """
import json, runpy, sys
codes = {}
for name, module, args in json.loads(sys.argv[1]):
    for stream in (sys.stdout, sys.stderr):
        print(f"@@@ {name}", file=stream, flush=True)
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        codes[name] = 0
    except SystemExit as exit:
        codes[name] = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    sys.stdout.flush(); sys.stderr.flush()
print("@@@ codes")
print(json.dumps(codes), flush=True)
"""

# bench and preview compose train.yaml (its groups, the same help template): train stands for them.
HYDRA_COMMANDS = ("train", "eval", "predict", "inspect")
TYPO_MESSAGE = "model.arch.dropuot: unknown key"


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^@@@ (\S+)\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.fixture(scope="module")
def commands(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The Hydra commands' --help and two training runs with a user error: a config typo (in a
    YAML-level key, which Hydra itself would accept) and a data root that does not exist."""
    cwd = tmp_path_factory.mktemp("commands")
    runs = [
        (f"help_{c}", "leuk.cli.inspect" if c == "inspect" else f"leuk.{c}", ["--help"])
        for c in HYDRA_COMMANDS
    ]
    runs += [
        ("typo", "leuk.train", ["+model.arch.dropuot=0.5", f"paths.output_dir={cwd / 'typo'}"]),
        (
            "no_root",
            "leuk.train",
            [
                "data=folder",
                f"data.root={cwd / 'missing'}",
                f"paths.output_dir={cwd / 'no_root'}",
                *TINY_LOADER,
            ],
        ),
    ]
    proc = subprocess.run(
        [PYTHON, "-c", _DRIVER, json.dumps(runs)],
        cwd=cwd,
        env={**subprocess_env(), "HYDRA_FULL_ERROR": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    out, err = _sections(proc.stdout), _sections(proc.stderr)
    assert "codes" in out, proc.stdout[-3000:] + proc.stderr[-3000:]
    codes = json.loads(out.pop("codes").split("\n", 1)[0])
    return {
        name: {"out": out.get(name, ""), "err": err.get(name, ""), "code": code, "dir": cwd / name}
        for name, code in codes.items()
    }


# ------------------------------------------------------------------ user errors, said once
@pytest.mark.slow
@pytest.mark.parametrize(
    ("run", "message", "code"),
    [
        ("typo", TYPO_MESSAGE, UserConfigError.exit_code),
        ("no_root", "does not exist: set data.root=", UserError.exit_code),
    ],
)
def test_a_user_error_is_said_once_without_traceback(
    commands: dict, run: str, message: str, code: int
) -> None:
    result = commands[run]
    both = result["out"] + result["err"]
    assert both.count(message) == 1, both
    assert "Traceback" not in both and 'File "' not in both, both
    assert "leuk-train: error: " in result["err"]
    assert result["code"] == code != 0
    # Not a failed run: nothing ran, so leuk.report must not count it.
    assert not (result["dir"] / FAILED_FILE).exists()


def test_user_errors_prints_once_and_exits(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit, user_errors("leuk-x"):
        raise ConfigError(["a.b: unknown key"])
    assert exit.value.code == 2
    assert capsys.readouterr().err == "leuk-x: error: invalid config:\n  - a.b: unknown key\n"
    # Hydra's instantiate wraps a constructor's error: the user error inside is what is said.
    with pytest.raises(SystemExit) as exit, user_errors("leuk-x"):
        try:
            raise DataError("data root '/x' does not exist (set data.root)")
        except DataError as inner:
            raise InstantiationException("Error in call to target") from inner
    assert exit.value.code == 1
    assert capsys.readouterr().err == "leuk-x: error: data root '/x' does not exist (set data.root)\n"


def test_user_errors_lets_other_errors_and_full_error_through(monkeypatch) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(ZeroDivisionError), user_errors("leuk-x"):
        raise ZeroDivisionError
    # An error raised while handling a user error is a bug of its own.
    with pytest.raises(KeyError), user_errors("leuk-x"):
        try:
            raise DataError("x")
        except DataError:
            raise KeyError("bug") from None
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(CheckpointError), user_errors("leuk-x"):
        raise CheckpointError("ckpt_path: no such checkpoint 'x'")


def test_user_errors_in_a_multirun_job_is_compact(monkeypatch, caplog) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr("leuk.cli.errors._in_multirun", lambda: True)
    monkeypatch.setattr("leuk.cli.errors._job_label", lambda: "job 1 (seed=2): ")
    with (
        pytest.raises(JobUserError, match=r"^job 1 \(seed=2\): leuk-x: error: data root"),
        user_errors("leuk-x"),
    ):
        raise DataError("data root '/x' does not exist")
    assert "job 1 (seed=2): leuk-x: error: data root" in caplog.text


def test_the_error_classes_are_user_errors() -> None:
    from leuk.checkpoints import CheckpointMismatchError
    from leuk.data.decode import BadImagesError
    from leuk.data.transforms import AugmentationConfigError
    from leuk.models.registry import PretrainedWeightsError, RandomFrozenError, UnknownModelError
    from leuk.preprocess.base import PreprocessConfigError

    for config_error in (ConfigError, UnknownModelError, RandomFrozenError, AugmentationConfigError):
        assert issubclass(config_error, UserConfigError) and config_error.exit_code == 2
    assert issubclass(PreprocessConfigError, UserConfigError)
    for other in (
        DataError,
        BadImagesError,
        CheckpointError,
        CheckpointMismatchError,
        PretrainedWeightsError,
    ):
        assert issubclass(other, UserError) and other.exit_code == 1
    # Callers that caught the built-in types still do.
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)
    assert user_error_in(RuntimeError("x")) is None


def test_task_wrapper_writes_no_failed_json_for_a_user_error(tmp_path: Path) -> None:
    cfg = compose_config(TINY, output_dir=tmp_path)

    @task_wrapper(task="t")
    def broken(cfg, error: Exception) -> None:
        raise error

    with pytest.raises(DataError):
        broken(cfg, DataError("data root '/x' does not exist"))
    assert not (tmp_path / FAILED_FILE).exists()
    with pytest.raises(RuntimeError):
        broken(cfg, RuntimeError("a real failure"))
    assert (tmp_path / FAILED_FILE).is_file()


def test_a_missing_resume_checkpoint_stops_before_the_data(tmp_path: Path, monkeypatch) -> None:
    from leuk.cli import train as train_cli

    def no_data(cfg):
        raise AssertionError("the data was built before the checkpoint was checked")

    monkeypatch.setattr(train_cli, "build_run", no_data)
    cfg = compose_config([*TINY, f"ckpt_path={tmp_path / 'nope.ckpt'}"], output_dir=tmp_path)
    with pytest.raises(CheckpointError, match="ckpt_path: no such checkpoint"):
        train_cli.train(cfg)


# ------------------------------------------------------------------ --help
@pytest.mark.slow
@pytest.mark.parametrize("command", HYDRA_COMMANDS)
def test_help_lists_real_options_and_examples(commands: dict, command: str) -> None:
    result = commands[f"help_{command}"]
    text = result["out"]
    assert result["code"] == 0, result["err"]
    assert "== Examples ==" in text and "== Config groups" in text, text
    listing = text.split("== Config groups", 1)[1].split("\n== ")[0].splitlines()[1:]
    groups = dict(line.strip().split(": ", 1) for line in listing if line.strip())
    assert groups, text
    for group, options in groups.items():
        names = [o.strip().rstrip("*") for o in options.split("  (")[0].split(",")]
        assert not [n for n in names if n.startswith("_")], (group, options)
        assert not group.startswith("hydra"), group
        on_disk = {p.stem for p in (config_dir() / group).glob("*.yaml") if not p.stem.startswith("_")}
        assert set(names) == on_disk, (group, names)
    if command == "train":
        assert {"model", "data", "trainer", "experiment"} <= set(groups)
        assert "mcb_hypernet*" in groups["model"] and "_base" not in text and "_loader" not in text
        assert "python -m leuk.train" in text.split("== Examples ==", 1)[1]
    # The full config dump of Hydra's default help is not repeated here (--cfg job prints it).
    assert "_target_" not in text


# ------------------------------------------------------------------ Trainer keys without +
TRAINER_OVERRIDES = {
    "max_steps": (3, 3),
    "max_time": ("00:00:10:00", None),
    "limit_train_batches": (2, 2),
    "limit_val_batches": (1, 1),
    "limit_test_batches": (0.5, 0.5),
    "limit_predict_batches": (4, 4),
    "accumulate_grad_batches": (2, 2),
    "gradient_clip_val": (1.0, 1.0),
    "val_check_interval": (0.5, 0.5),
    "num_sanity_val_steps": (0, 0),
    "num_nodes": (1, 1),
    "devices": (1, None),
    "precision": ("bf16-mixed", "bf16-mixed"),
    "profiler": ("simple", None),
}


def test_trainer_keys_override_without_plus(tmp_path: Path) -> None:
    overrides = [f"trainer.{k}={v}" for k, (v, _) in TRAINER_OVERRIDES.items()]
    cfg = compose_config([*TINY, *overrides], output_dir=tmp_path)
    trainer = build_trainer(cfg, callbacks=[], loggers=[])
    for key, (_, expected) in TRAINER_OVERRIDES.items():
        if expected is not None:
            assert getattr(trainer, key) == expected, key
    assert isinstance(trainer.profiler, SimpleProfiler)
    assert trainer.num_devices == 1
    (timer,) = [c for c in trainer.callbacks if isinstance(c, Timer)]
    assert timer._duration == 600


def test_trainer_base_lists_lightnings_defaults() -> None:
    base = yaml.safe_load((config_dir() / "trainer" / "_base.yaml").read_text())
    defaults = {k: p.default for k, p in inspect.signature(L.Trainer.__init__).parameters.items()}
    # leuk's own settings (the first block of _base.yaml).
    own = {"_target_", "default_root_dir", "min_epochs", "max_epochs", "check_val_every_n_epoch"}
    own |= {"log_every_n_steps", "deterministic", "enable_progress_bar", "fast_dev_run"}
    assert set(TRAINER_OVERRIDES) <= set(base)
    for key, value in base.items():
        if key not in own:
            assert key in defaults and value == defaults[key], (key, value, defaults.get(key))


# ------------------------------------------------------------------ a model's minimum input size
def _min_sizes() -> dict[str, int | None]:
    sizes = {}
    for path in sorted((config_dir() / "model").glob("*.yaml")):
        if not path.stem.startswith("_"):
            sizes[path.stem] = yaml.safe_load(path.read_text()).get("min_image_size", "absent")
    return sizes


def test_every_model_config_states_its_minimum_input_size() -> None:
    sizes = _min_sizes()
    # Only `timm` (any timm model name) cannot know it.
    assert {m for m, s in sizes.items() if not isinstance(s, int)} == {"timm"}, sizes
    assert sizes["inception_v3"] == 75


def test_an_input_below_the_models_minimum_stops_before_the_data(tmp_path: Path, monkeypatch) -> None:
    from leuk.cli import train as train_cli

    def no_data(cfg):
        raise AssertionError("the data was built before the input size was checked")

    monkeypatch.setattr(train_cli, "build_run", no_data)
    cfg = compose_config(["model=inception_v3"], output_dir=tmp_path)
    assert cfg.data.image_size == 64
    with pytest.raises(ConfigError, match=r"data\.image_size: 64 px .*'inception_v3'.*min_image_size=75"):
        train_cli.train(cfg)


def _forward(model: str, size: int, device: str) -> torch.Tensor:
    """A forward pass of ``model`` at ``size`` px: on the meta device (shapes only), or on the CPU
    with every weight and buffer zero (built on the meta device first: a random initialization
    would take seconds and change nothing about the shapes)."""
    cfg = compose_config([f"model={model}"])
    with torch.device("meta"):
        net = create_model(cfg.model.name, 2, image_size=size, **cfg.model.arch).eval()
    if device != "meta":
        net = net.to_empty(device=device)
        for tensor in net.state_dict().values():
            tensor.zero_()
    with torch.no_grad():
        return net(torch.zeros(1, 3, size, size, device=device))


@pytest.mark.parametrize("model", [m for m, s in _min_sizes().items() if isinstance(s, int) and s > 1])
def test_the_stated_minimum_is_the_architectures(model: str) -> None:
    """On the meta device (shapes only): the stated minimum passes, one pixel less does not."""
    size = _min_sizes()[model]
    assert _forward(model, size, "meta").shape == (1, 2)
    with pytest.raises((RuntimeError, ValueError)):
        _forward(model, size - 1, "meta")


def test_inception_v3_runs_at_its_minimum_on_the_cpu() -> None:
    out = _forward("inception_v3", _min_sizes()["inception_v3"], "cpu")
    assert out.shape == (1, 2) and torch.isfinite(out).all()


# ------------------------------------------------------------------ commands and console scripts
def _scripts() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _documented_modules() -> set[str]:
    """Every `python -m leuk...` the README and docs name (the changelog's history excepted)."""
    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    found = set()
    for page in pages:
        if page.name != "changelog.md":
            found |= set(re.findall(r"python -m (leuk(?:\.\w+)+)", page.read_text()))
    return found


def test_console_scripts_are_callable_entry_points() -> None:
    import importlib

    scripts = _scripts()
    for name, target in scripts.items():
        module, _, attr = target.partition(":")
        assert name == "leuk-" + module.rsplit(".", 1)[1] and module.startswith("leuk.cli."), name
        assert callable(getattr(importlib.import_module(module), attr)), target
    # Every command module under leuk/cli has its script.
    commands = {p.stem for p in (REPO_ROOT / "leuk" / "cli").glob("*.py")} - {"__init__", "errors"}
    assert {f"leuk-{c}" for c in commands} == set(scripts)


def test_every_documented_module_exists_and_has_a_script() -> None:
    import importlib

    scripts = _scripts()
    documented = _documented_modules()
    assert {"leuk.train", "leuk.eval", "leuk.predict", "leuk.report", "leuk.bench"} <= documented
    for module in sorted(documented):
        imported = importlib.import_module(module)
        command = module.rsplit(".", 1)[1]
        # `python -m leuk.train` and `leuk-train` run the same function.
        target = scripts.get(f"leuk-{command}")
        assert target is not None, f"{module} has no console script leuk-{command}"
        script_module, _, attr = target.partition(":")
        assert imported.main is getattr(importlib.import_module(script_module), attr), module


def test_the_argparse_commands_share_the_error_style(tmp_path: Path, capsys) -> None:
    from leuk.cli.report import main as report

    assert report([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("leuk-report: error: ")


# ------------------------------------------------------------------ the Dockerfile
def _dockerfile_instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (REPO_ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [i.strip() for i in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines() if i.strip()]


def test_the_dockerfile_hard_codes_no_package_index() -> None:
    instructions = _dockerfile_instructions()
    text = "\n".join(instructions)
    assert not re.search(r"https?://", text), "a hard-coded URL in the Dockerfile"
    for flag in re.findall(r"--(?:extra-)?index-url[= ]+(\S+)", text):
        assert flag.strip("\"'").startswith("$"), flag
    # The CUDA index is a build argument without a default, used only when given.
    assert "ARG TORCH_INDEX" in instructions
    assert '--index-url "${TORCH_INDEX}"' in text and '[ -n "${TORCH_INDEX}" ]' in text
