"""Paper protocols (``experiment=``) and sweeps (``sweep=``): each sweep expands to the jobs it
promises, every job composes, and the launchers and W&B grouping are configured as documented.
Running every experiment with fast_dev_run is tests/test_train.py's job (it covers every option)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from leuk.config import config_dir
from leuk.config.schema import validate_train_config
from leuk.models.registry import check_weights_policy
from tests.helpers import OFFLINE_FROM_SCRATCH, compose_config
from tests.test_configs import all_options
from tests.test_train import EXTRA_OVERRIDES, REAL_DATA

# Jobs each sweep runs: the papers' grids as the issue gives them.
SWEEP_JOBS = {
    "seeds": 5,
    "mcb_grid": 3 * 2 * 5,
    "aldl_tables": 6 * 2 * 10,
    "aldl_color_spaces": 4 * 2,
    "aldl_kfold": 5,
    "vgg16_image_size": 4,
    "cnmc_folds": 3,
}
OPTUNA = "optuna"

EXPERIMENTS = sorted(o for g, o in all_options() if g == "experiment")


def compose_with_hydra(overrides: Sequence[str]) -> DictConfig:
    """The composed config with its ``hydra`` node, as a multirun's sweeper sees it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def expand_jobs(cfg: DictConfig, extra: Sequence[str] = ()) -> list[list[str]]:
    """Each job's overrides, as Hydra's basic sweeper builds them (parameters, then the command line)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    params = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.params or {}).items()]
    overrides = OverridesParser.create().parse_overrides([*params, *extra])
    (batch,) = BasicSweeper.split_arguments(overrides, max_batch_size=None)
    return batch


def covering_jobs(jobs: list[list[str]]) -> list[list[str]]:
    """A few jobs that between them use every swept value once."""
    chosen, seen = [], set()
    for job in jobs:
        if not set(job) <= seen:
            chosen.append(job)
            seen |= set(job)
    return chosen


def test_every_sweep_has_an_expected_job_count() -> None:
    sweeps = {o for g, o in all_options() if g == "sweep"}
    assert sweeps == {*SWEEP_JOBS, OPTUNA}, "add the new sweep's job count to SWEEP_JOBS"


@pytest.mark.parametrize(("sweep", "n_jobs"), sorted(SWEEP_JOBS.items()))
def test_sweep_expands_and_every_value_composes(sweep: str, n_jobs: int, tmp_path) -> None:
    cfg = compose_with_hydra([f"sweep={sweep}"])
    assert cfg.hydra.mode == RunMode.MULTIRUN, "a sweep must not silently run one job without -m"
    jobs = expand_jobs(cfg)
    assert len(jobs) == n_jobs
    assert len({tuple(j) for j in jobs}) == n_jobs
    for job in covering_jobs(jobs):
        validate_train_config(compose_config([f"sweep={sweep}", *job], output_dir=tmp_path))


def test_seed_count_of_aldl_tables_is_configurable() -> None:
    cfg = compose_with_hydra(["sweep=aldl_tables"])
    jobs = expand_jobs(cfg, extra=["seed=1,2,3"])
    assert len(jobs) == 6 * 2 * 3
    models = {o.split("=", 1)[1] for job in jobs for o in job if o.startswith("model=")}
    assert "aldl" in models and len(models) == 6


def test_sweep_parameters_reach_the_job_config(tmp_path) -> None:
    grid = expand_jobs(compose_with_hydra(["sweep=mcb_grid"]))
    job = next(j for j in grid if {"data.image_size=168", "trainer.max_epochs=35"} <= set(j))
    cfg = compose_config(["sweep=mcb_grid", *job], output_dir=tmp_path)
    assert cfg.model.name == "mcb_hypernet" and cfg.task_name == "mcb_hypernet_paper"
    assert (cfg.data.image_size, cfg.trainer.max_epochs) == (168, 35)
    assert cfg.data.batch_size in (16, 32)
    folds = expand_jobs(compose_with_hydra(["sweep=aldl_kfold"]))
    cfg = compose_config(["sweep=aldl_kfold", *folds[3]], output_dir=tmp_path)
    assert cfg.data.split._target_.endswith("KFoldSplit") and cfg.data.split.fold_index == 3
    assert "fold_index" not in cfg.data
    assert cfg.model.name == "aldl"


def test_color_space_sweep_sets_the_color_space_step(tmp_path) -> None:
    jobs = expand_jobs(compose_with_hydra(["sweep=aldl_color_spaces"]))
    spaces = set()
    for job in jobs:
        cfg = compose_config(["sweep=aldl_color_spaces", *job], output_dir=tmp_path)
        step = cfg.preprocess.steps.lesion  # ALDL's colour space is the segmentation's (the lesion crop)
        assert step._target_.endswith("LesionCrop")
        spaces.add((step.space, cfg.data.split.test))
    assert spaces == {(s, t) for s in ("rgb", "hsv", "lab", "hed") for t in (0.3, 0.4)}


def test_configs_and_references_name_preprocessing_steps() -> None:
    """Sweeps, experiments and the papers' table address a preprocessing step by name: a position
    would silently retarget another step once a step is inserted."""
    import re

    from leuk.reference import Reference, ReferenceFileError, load_references

    positional = re.compile(r"preprocess\.steps\.\d")
    for path in sorted(config_dir().rglob("*.yaml")):
        assert not positional.search(path.read_text()), path
    for ref in load_references():
        assert not positional.search(ref.config), ref
    lesion = [r for r in load_references() if "preprocess.steps.lesion.space=rgb" in r.config.split()]
    assert lesion and all(("preprocess.steps.lesion.space", "rgb") in r.conditions() for r in lesion)
    old = Reference(**{**vars(lesion[0]), "config": "experiment=aldl_paper preprocess.steps.2.space=rgb"})
    with pytest.raises(ReferenceFileError, match="name the preprocessing step"):
        old.conditions()


def test_optuna_search_space(tmp_path) -> None:
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override
    from optuna.distributions import CategoricalDistribution, LogUniformDistribution

    from leuk.metrics import DEFINITIONS

    cfg = compose_with_hydra([f"sweep={OPTUNA}"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize" and sweeper.n_trials == 20
    stage, _, metric = cfg.optimized_metric.partition("/")
    assert stage in {"val", "test"} and metric in DEFINITIONS
    params = [f"{k}={v}" for k, v in sweeper.params.items()]
    dists = {
        o.get_key_element(): create_optuna_distribution_from_override(o)
        for o in OverridesParser.create().parse_overrides(params)
    }
    assert isinstance(dists["optimizer.lr"], LogUniformDistribution)
    assert isinstance(dists["data.batch_size"], CategoricalDistribution)
    assert isinstance(dists["data.image_size"], CategoricalDistribution)
    # Every key it searches exists in the run config.
    run_cfg = compose_config([f"sweep={OPTUNA}"], output_dir=tmp_path)
    validate_train_config(run_cfg)
    for key in dists:
        assert OmegaConf.select(run_cfg, key) is not None, key


def test_slurm_launcher_config() -> None:
    cfg = compose_with_hydra(["hydra/launcher=slurm_gpu", "trainer=slurm", "hydra.launcher.gpus_per_node=4"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    # trainer=slurm reads the GPU count from SLURM's tasks per node: one task per GPU.
    assert launcher.tasks_per_node == launcher.gpus_per_node == 4
    assert launcher.timeout_min > 0 and "partition" in launcher


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_records_its_protocol(experiment: str, tmp_path) -> None:
    text = (config_dir() / "experiment" / f"{experiment}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    assert "ImageNet" in text, "say whether the paper started from ImageNet weights"
    cfg = compose_config([f"experiment={experiment}"], output_dir=tmp_path)
    validate_train_config(cfg)
    paper_weights = bool((cfg.model.paper or {}).get("imagenet_weights"))
    assert cfg.model.pretrained is paper_weights, "the experiment starts from the weights its paper did"
    assert cfg.task_name == experiment and experiment in cfg.tags
    # tests/test_train.py runs it with fast_dev_run: on the real data (skipped where absent) or,
    # where that is too slow, on the synthetic set.
    real = not cfg.data.source._target_.endswith("SyntheticSource")
    on_synthetic = "data=synthetic" in EXTRA_OVERRIDES.get(("experiment", experiment), [])
    assert (("experiment", experiment) in REAL_DATA) == (real and not on_synthetic), "REAL_DATA"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_starts_offline_from_scratch_when_asked(experiment: str, tmp_path) -> None:
    """Without the ImageNet weights, every experiment still starts (the weights policy lets it) with
    model.pretrained=false model.allow_random_frozen=true, as tests/test_train.py runs them."""
    cfg = compose_config([f"experiment={experiment}", *OFFLINE_FROM_SCRATCH], output_dir=tmp_path)
    validate_train_config(cfg)
    plan = check_weights_policy(cfg.model, image_size=cfg.data.image_size)
    assert plan.random_frozen <= plan.frozen
    if cfg.model.name in ("vgg16_mod", "mseenet"):
        assert plan.random_frozen > 0, "these freeze a part: from scratch it is random"


@pytest.mark.parametrize("experiment", ["vgg16_paper", "mseenet_paper"])
def test_experiment_starts_from_a_local_weights_file(experiment: str, tmp_path) -> None:
    """The other offline way: the backbone's weights in a file (here the random initialization,
    saved by the test) satisfy the experiment's model.pretrained=true and its frozen part."""
    import timm
    import torch

    from leuk.models.registry import pretrained_tag

    cfg = compose_config([f"experiment={experiment}"], output_dir=tmp_path)
    (tag,) = check_weights_policy_tags(cfg)
    backbone = timm.create_model(tag.split(".")[0], num_classes=0)
    assert pretrained_tag(backbone) == tag
    path = tmp_path / f"{tag}.pth"
    torch.save(backbone.state_dict(), path)
    cfg = compose_config([f"experiment={experiment}", f"model.weights={path}"], output_dir=tmp_path)
    plan = check_weights_policy(cfg.model, image_size=cfg.data.image_size)
    assert plan.frozen > 0 and plan.random_frozen == 0


def check_weights_policy_tags(cfg: DictConfig) -> list[str]:
    """The pretrained weights the experiment's model asks timm for (no download, no check)."""
    no_weights = OmegaConf.merge(cfg.model, {"pretrained": False, "allow_random_frozen": True})
    return check_weights_policy(no_weights, image_size=cfg.data.image_size).tags


# The protocol numbers the issue gives for each paper.
PROTOCOLS = {
    "mcb_hypernet_paper": {"data.image_size": 256, "data.batch_size": 32, "trainer.max_epochs": 50},
    "mseenet_paper": {"data.image_size": 224, "callbacks.early_stopping.monitor": "val/loss"},
    "aldl_paper": {
        "optimizer.lr": 3e-4,
        "optimizer.weight_decay": 1e-5,
        "scheduler.scheduler.eta_min": 1e-6,
        "model.arch.dropout": 0.5,
        "data.batch_size": 32,
        "callbacks.early_stopping.patience": 15,
        "trainer.max_epochs": 150,
        "data.split.test": 0.3,
    },
    "vgg16_paper": {
        "data.image_size": 300,
        "optimizer.lr": 1e-5,
        "data.batch_size": 32,
        "trainer.max_epochs": 25,
    },
    "mobilenet_m_paper": {
        "data.balance": "hsv_copy",
        "data.split.train": 0.7,
        "data.split.test": 0.2,
        "optimizer.lr": 1e-3,
        "scheduler.scheduler.factor": 0.1,
        # Keras's patience 5 (a cut on the 5th epoch without improvement) is torch's 4.
        "scheduler.scheduler.patience": 4,
        "scheduler.scheduler.min_lr": 1e-6,
        "callbacks.early_stopping.patience": 20,
        "data.batch_size": 16,
        "trainer.max_epochs": 100,
        "model.arch.l1": 0.015,
    },
}


@pytest.mark.parametrize("experiment", sorted(PROTOCOLS))
def test_experiment_values(experiment: str, tmp_path) -> None:
    cfg = compose_config([f"experiment={experiment}"], output_dir=tmp_path)
    for key, expected in PROTOCOLS[experiment].items():
        wanted = pytest.approx(expected) if isinstance(expected, float) else expected
        assert OmegaConf.select(cfg, key) == wanted, key


@pytest.fixture
def multirun_job(tmp_path):
    """Act as one job of a multirun (Hydra's config of the job is set, as a launcher sets it)."""

    def _set(overrides: Sequence[str]) -> DictConfig:
        cfg = compose_with_hydra(overrides)
        with open_dict(cfg):
            cfg.hydra.mode = RunMode.MULTIRUN
            cfg.hydra.sweep.dir = str(tmp_path / "multirun" / "2026-01-02_03-04-05_abcdef")
            cfg.hydra.runtime.output_dir = str(tmp_path / "job")
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _set
    HydraConfig.instance().cfg = None


def test_wandb_group_and_tags_of_a_sweep_job(multirun_job) -> None:
    cfg = multirun_job(
        ["logger=wandb", "experiment=mcb_hypernet_paper", "sweep=mcb_grid", "seed=3", "data.image_size=168"]
    )
    wandb = cfg.logger.wandb
    assert wandb.group == "mcb_hypernet_paper-mcb_grid_2026-01-02_03-04-05_abcdef"
    tags = list(wandb.tags)
    assert tags[:2] == ["MCB-HyperNet", "mcb_hypernet_paper"]
    for tag in (
        "model:mcb_hypernet",
        "seed:3",
        "experiment:mcb_hypernet_paper",
        "data:all",
        "split:ratio_80_10_10",
    ):
        assert tag in tags


def test_wandb_name_of_a_sweep_job(multirun_job) -> None:
    """Model, data folder and the job's overrides, without paths, Hydra's own and what the name or
    the group already says."""
    cfg = multirun_job(
        [
            "logger=wandb",
            "experiment=mcb_hypernet_paper",
            "sweep=mcb_grid",
            "seed=1",
            "optimizer.lr=0.001",
            "paths.output_dir=/somewhere",
            "hydra.job.chdir=false",
            "data.num_workers=0",
            "trainer.limit_train_batches=2",
        ]
    )
    assert (
        cfg.logger.wandb.name
        == "mcb_hypernet-all_taleqani-seed=1,optimizer.lr=0.001,trainer.limit_train_batches=2"
    )


def test_wandb_group_of_a_single_run(tmp_path) -> None:
    cfg = compose_config(["logger=wandb"], output_dir=tmp_path)
    assert cfg.logger.wandb.group == cfg.task_name
    assert list(cfg.logger.wandb.tags) == ["model:mcb_hypernet", "seed:42"]


def _leaves(node: object, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_cpu_budget_changes_only_size_and_epochs(experiment: str, tmp_path) -> None:
    """budget=cpu scales a paper's protocol down and changes nothing else (issue 14): 128 px and the
    budget's epoch count; settings that follow the epoch count (a cosine schedule's T_max) follow it."""
    paper = compose_config([f"experiment={experiment}"], output_dir=tmp_path)
    budget = compose_config([f"experiment={experiment}", "budget=cpu"], output_dir=tmp_path)
    validate_train_config(budget)
    a = _leaves(OmegaConf.to_container(paper, resolve=True))
    b = _leaves(OmegaConf.to_container(budget, resolve=True))
    assert set(a) == set(b)
    changed = {k for k in a if a[k] != b[k]}
    assert b["data.image_size"] == 128 and b["trainer.max_epochs"] < a["trainer.max_epochs"]
    allowed = {"data.image_size", "trainer.max_epochs", "scheduler.scheduler.T_max"}
    assert changed <= allowed, changed - allowed
