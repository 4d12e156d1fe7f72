"""Every config option composes and validates; typos and unknown names fail early and clearly."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import open_dict

from leuk.config import config_dir
from leuk.config.schema import validate_train_config
from leuk.config.validate import ConfigError
from tests.helpers import compose_config

# Groups whose options are run configs (not Hydra's own settings).
SKIP_GROUPS = {"hydra", "paths"}


def all_options() -> list[tuple[str, str]]:
    root = config_dir()
    options = []
    for group in sorted(p for p in root.rglob("*") if p.is_dir()):
        name = group.relative_to(root).as_posix()
        if name.split("/")[0] in SKIP_GROUPS:
            continue
        for f in sorted(group.glob("*.yaml")):
            if not f.stem.startswith("_"):
                options.append((name, f.stem))
    return options


def test_every_group_has_options() -> None:
    groups = {g for g, _ in all_options()}
    expected = {
        "data",
        "model",
        "augmentation",
        "background",
        "stain",
        "preprocess",
        "loss",
        "optimizer",
        "scheduler",
        "trainer",
        "logger",
        "callbacks",
        "debug",
        "sweep",
        "experiment",
    }
    assert expected <= groups


@pytest.mark.parametrize(("group", "option"), all_options())
def test_option_composes_and_validates(group: str, option: str, tmp_path) -> None:
    overrides = [f"{group}={option}"]
    if (group, option) == ("data", "folder"):
        overrides.append(f"data.root={tmp_path}")
    cfg = compose_config(overrides, output_dir=tmp_path)
    minimum = cfg.model.get("min_image_size")
    if minimum and cfg.data.image_size < minimum:
        # A model that cannot run at the default 64 px (inception_v3) is refused at it, by design.
        cfg = compose_config([*overrides, f"data.image_size={minimum}"], output_dir=tmp_path)
    validate_train_config(cfg)


def test_composes_from_train_yaml_defaults(tmp_path) -> None:
    cfg = compose_config([], output_dir=tmp_path)
    assert cfg.model.name == "mcb_hypernet"
    assert cfg.data.source._target_.endswith("SyntheticSource")
    assert cfg.trainer.accelerator == "cpu"


def test_typo_in_yaml_key_names_the_key(tmp_path) -> None:
    cfg = compose_config([], output_dir=tmp_path)
    with open_dict(cfg):
        cfg.model.arch.dropuot = 0.3  # as if an experiment file misspelt it
    with pytest.raises(ConfigError) as err:
        validate_train_config(cfg)
    msg = str(err.value)
    assert "model.arch.dropuot" in msg and "Did you mean 'dropout'" in msg


def test_typo_in_data_key_names_the_key(tmp_path) -> None:
    cfg = compose_config(["+data.batchsize=4"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"data\.batchsize: unknown key.*batch_size"):
        validate_train_config(cfg)


@pytest.mark.parametrize("bound", [None, "trainer.max_steps=100", "trainer.max_time=00:01:00:00"])
def test_endless_training_is_refused_unless_bounded(bound: str | None, tmp_path) -> None:
    """trainer.max_epochs=-1 is Lightning's "no epoch limit": alone, the run would never end."""
    overrides = ["trainer.max_epochs=-1", *([bound] if bound else [])]
    cfg = compose_config(overrides, output_dir=tmp_path)
    if bound:
        validate_train_config(cfg)
        return
    with pytest.raises(ConfigError, match=r"trainer\.max_epochs: -1 .*trainer\.max_steps.*trainer\.max_time"):
        validate_train_config(cfg)
    with pytest.raises(ConfigError, match=r"trainer\.max_epochs: -2"):
        validate_train_config(compose_config(["trainer.max_epochs=-2"], output_dir=tmp_path))


def test_command_line_typo_is_refused_by_hydra(tmp_path) -> None:
    with pytest.raises(ConfigCompositionException, match="batchsize"):
        compose_config(["data.batchsize=4"], output_dir=tmp_path)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.batch_size=abc", "data.batch_size"),
        ("trainer.max_epochs=many", "trainer.max_epochs"),
        ("model.pretrained=maybe", "model.pretrained"),
        ("optimizer.lr=fast", "optimizer.lr"),
        ("seed=abc", "seed"),
        ("model.arch.gating=sometimes", "model.arch.gating"),
    ],
)
def test_wrong_type_names_the_key(override: str, key: str, tmp_path) -> None:
    cfg = compose_config([override], output_dir=tmp_path)
    with pytest.raises(ConfigError) as err:
        validate_train_config(cfg)
    assert f"{key}:" in str(err.value)


def test_unknown_model_name_lists_valid_ones(tmp_path) -> None:
    cfg = compose_config(["model.name=mcb_hypernett"], output_dir=tmp_path)
    with pytest.raises(ConfigError) as err:
        validate_train_config(cfg)
    msg = str(err.value)
    assert "unknown model 'mcb_hypernett'" in msg and "mcb_hypernet" in msg


def test_unknown_group_option_lists_valid_ones(tmp_path) -> None:
    with pytest.raises(MissingConfigException) as err:
        compose_config(["data=imagenet"], output_dir=tmp_path)
    msg = str(err.value)
    assert "synthetic" in msg and "folder" in msg
    with pytest.raises(MissingConfigException, match="mcb_hypernet"):
        compose_config(["model=resnet999"], output_dir=tmp_path)


def test_misspelt_augmentation_argument_fails(tmp_path) -> None:
    cfg = compose_config(["augmentation=mcb", "+augmentation.transforms.0.limitt=10"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"augmentation\.transforms\[0\]\.limitt"):
        validate_train_config(cfg)


def test_unknown_top_level_key(tmp_path) -> None:
    cfg = compose_config(["+sede=3"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"sede: unknown key\. Did you mean 'seed'"):
        validate_train_config(cfg)


def test_run_folder_token_differs_between_processes(tmp_path) -> None:
    """Two runs started in the same second must not share a folder: the token is per process."""
    import subprocess

    from tests.helpers import PYTHON, subprocess_env

    code = (
        "import leuk; from omegaconf import OmegaConf; print(OmegaConf.create({'t': '${leuk.run_token:}'}).t)"
    )
    tokens = {
        subprocess.run(
            [PYTHON, "-c", code], env=subprocess_env(), capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    }
    assert len(tokens) == 2


def test_wheel_ships_the_config_tree(tmp_path) -> None:
    """`pip install .` (not only -e) must find conf/: the wheel carries it as leuk/conf."""
    import subprocess
    import zipfile

    from tests.helpers import PYTHON, REPO_ROOT, subprocess_env

    subprocess.run(
        [
            PYTHON,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO_ROOT),
        ],
        env=subprocess_env(),
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next(tmp_path.glob("leuk-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    repo_configs = {
        f"leuk/conf/{p.relative_to(config_dir()).as_posix()}" for p in config_dir().rglob("*.yaml")
    }
    assert "leuk/conf/train.yaml" in names
    assert repo_configs <= names, sorted(repo_configs - names)
    modules = {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "leuk").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    # Package data read at run time (leuk.report's paper values).
    data_files = {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "leuk").rglob("*.csv")}
    assert "leuk/reference/paper_results.csv" in data_files
    assert data_files <= names, sorted(data_files - names)


def test_schemas_are_structured_configs_in_the_config_store() -> None:
    """Every schema's types are ones OmegaConf understands, and Hydra can find them."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from leuk.config.schema import SCHEMAS, register_configs

    register_configs()
    for name, schema in SCHEMAS.items():
        OmegaConf.structured(schema)
        assert ConfigStore.instance().load(f"schema/{name}.yaml") is not None


def test_config_layer_does_not_import_models() -> None:
    """Importing the schemas leaves leuk.models unimported: the registry is looked up by the check."""
    import subprocess

    from tests.helpers import PYTHON, subprocess_env

    code = "import sys, leuk.config.schema; print(any(m.startswith('leuk.models') for m in sys.modules))"
    out = subprocess.run(
        [PYTHON, "-c", code], env=subprocess_env(), capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_model_lookup_can_be_handed_in(tmp_path) -> None:
    def lookup(name: str):
        raise ValueError(f"no model called {name} here")

    cfg = compose_config([], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"model\.name: no model called mcb_hypernet here"):
        validate_train_config(cfg, model_lookup=lookup)


def test_every_problem_is_listed_at_once(tmp_path) -> None:
    cfg = compose_config(["+sede=3", "test_checkpoint=middle", "+model.mean_=1"], output_dir=tmp_path)
    with pytest.raises(ConfigError) as err:
        validate_train_config(cfg)
    problems = {p.split(":")[0]: p for p in err.value.problems}
    assert set(problems) == {"sede", "test_checkpoint", "model.mean_"}
    assert "Did you mean 'mean'" in problems["model.mean_"]
    assert "best, last" in problems["test_checkpoint"]


def test_model_mean_needs_three_values(tmp_path) -> None:
    cfg = compose_config(["model.mean=[0.5,0.5]"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"model\.mean: needs 3 values \(one per RGB channel\), got 2"):
        validate_train_config(cfg)


def test_named_preprocess_steps_are_checked_by_name(tmp_path) -> None:
    """preprocess.steps as an ordered mapping {name: step node or null} (and a list in old configs)."""
    cfg = compose_config([], output_dir=tmp_path)
    with open_dict(cfg):
        cfg.preprocess.steps = {
            "clahe": {"_target_": "leuk.preprocess.clahe.Clahe", "clip_limt": 2.0},
            "off": None,
            "broken": {"clip_limit": 2.0},
        }
    with pytest.raises(ConfigError) as err:
        validate_train_config(cfg)
    msg = str(err.value)
    assert "preprocess.steps.clahe.clip_limt" in msg and "Did you mean 'clip_limit'" in msg
    assert "preprocess.steps.broken: expected a node with a _target_ (or null)" in msg
    assert "preprocess.steps.off" not in msg
    with open_dict(cfg):
        cfg.preprocess.steps = {"clahe": {"_target_": "leuk.preprocess.clahe.Clahe"}, "off": None}
    validate_train_config(cfg)
    with open_dict(cfg):
        cfg.preprocess.steps = "clahe"
    with pytest.raises(ConfigError, match=r"preprocess\.steps: expected a mapping of named steps"):
        validate_train_config(cfg)


def test_plots_switch_is_a_boolean(tmp_path) -> None:
    validate_train_config(compose_config(["plots=false"], output_dir=tmp_path))
    with pytest.raises(ConfigError, match="plots: 'often' does not fit the expected type bool"):
        validate_train_config(compose_config(["plots=often"], output_dir=tmp_path))


@pytest.mark.parametrize(("name", "section"), [("bench", "bench"), ("preview", "preview")])
def test_bench_and_preview_configs_validate(name: str, section: str, tmp_path) -> None:
    from leuk.config import schema

    validate = getattr(schema, f"validate_{name}_config")
    validate(compose_config([], output_dir=tmp_path, config_name=name))
    # Their own section is theirs: the training check refuses it.
    with pytest.raises(ConfigError, match=rf"{section}: unknown key"):
        validate_train_config(compose_config([], output_dir=tmp_path, config_name=name))
    with pytest.raises(ConfigError, match=rf"{section}\.\w+: unknown key"):
        validate(compose_config([f"+{section}.typo=1"], output_dir=tmp_path, config_name=name))


def test_eval_config_lists_every_problem(tmp_path) -> None:
    from leuk.config.schema import validate_eval_config

    with pytest.raises(ConfigError, match="ckpt_path: required"):
        validate_eval_config(compose_config([], output_dir=tmp_path, config_name="eval"))
    cfg = compose_config(
        ["ckpt_path=x.ckpt", "abstain_threshold=1.5", "noise_sigmas=[0,-2]", "batch_size=0", "+splitt=test"],
        tmp_path,
        "eval",
    )
    with pytest.raises(ConfigError) as err:
        validate_eval_config(cfg)
    msg = str(err.value)
    assert "splitt: unknown key. Did you mean 'split'" in msg
    assert "batch_size: must be at least 1, got 0" in msg
    assert "abstain_threshold: a softmax confidence in [0, 1], got 1.5" in msg
    assert msg.index("abstain_threshold") < msg.index("noise_sigmas")
    cfg = compose_config(["ckpt_path=x.ckpt", "data=folder"], tmp_path, "eval")
    with open_dict(cfg):
        cfg.data.root = "???"
    with pytest.raises(ConfigError, match=r"data\.root: required with a data config"):
        validate_eval_config(cfg)
    validate_eval_config(compose_config(["ckpt_path=x.ckpt", "split=val"], tmp_path, "eval"))


def test_eval_and_predict_schemas_hold_their_yaml_keys(tmp_path) -> None:
    """The dataclass fields are exactly the keys of conf/eval.yaml and conf/predict.yaml."""
    import dataclasses

    from leuk.config.schema import EvalConfig, PredictConfig

    for name, schema in (("eval", EvalConfig), ("predict", PredictConfig)):
        cfg = compose_config([], output_dir=tmp_path, config_name=name)
        assert set(cfg) <= {f.name for f in dataclasses.fields(schema)}
    assert {f.name for f in dataclasses.fields(PredictConfig)} == {
        "ckpt_path",
        "input",
        "paths",
        "hydra",
        "task_name",
        "abstain_threshold",
        "batch_size",
        "device",
        "print_config",
    }


def test_predict_config_lists_every_problem(tmp_path) -> None:
    from leuk.config.schema import validate_predict_config

    with pytest.raises(ConfigError) as err:
        validate_predict_config(compose_config(["batch_size=0"], tmp_path, "predict"))
    msg = str(err.value)
    assert "ckpt_path: required" in msg and "input: required (input=<image or folder>)" in msg
    assert "batch_size: must be at least 1, got 0" in msg
    validate_predict_config(compose_config(["ckpt_path=x.ckpt", "input=."], tmp_path, "predict"))


def test_inspect_config_validates(tmp_path) -> None:
    from leuk.config.schema import validate_inspect_config

    validate_inspect_config(compose_config([], output_dir=tmp_path, config_name="inspect"))
    cfg = compose_config(["show_groups=-1", "+data.batchsize=4"], output_dir=tmp_path, config_name="inspect")
    with pytest.raises(ConfigError) as err:
        validate_inspect_config(cfg)
    msg = str(err.value)
    assert "show_groups: must be at least 0, got -1" in msg and "data.batchsize: unknown key" in msg
