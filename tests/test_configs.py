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
