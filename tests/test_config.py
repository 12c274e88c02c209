"""Config composition and validation through the CLI and the package API."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, requires, run_cli
from omegaconf import OmegaConf

from hpclab.config import ConfigError, compose, compose_with_hydra
from hpclab.launch.job import run_dir_of
from hpclab.launch.sweep import plan, run_names, subset


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.foo=1", "train.foo"),
        ("train.epochs=abc", "train.epochs"),
        ("model.foo=1", "model.foo"),
        ("train.mixed_precision=fp8", "train.mixed_precision"),
        ("data.val_fraction=1.5", "data.val_fraction"),
    ],
)
def test_bad_override_exits_with_one_line_naming_the_key(workdir, override, key):
    proc = run_cli("launch.py", "sweep=ae_latent", override, cwd=workdir, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert key in lines[0]
    assert not (workdir / "results").exists()


def test_unknown_group_option_lists_the_choices(workdir):
    proc = run_cli("launch.py", "data=nope", cwd=workdir, check=False)
    assert proc.returncode == 2
    assert "data/nope" in proc.stderr and "fashion_mnist" in proc.stderr


def test_model_kwargs_are_checked_against_the_class_signature():
    with pytest.raises(ConfigError, match="model.name"):
        compose(["model.name=no_such_model"])
    with pytest.raises(ConfigError, match="model.bogus"):
        compose(["+model.bogus=3"])


def test_composed_config_has_absolute_paths_and_schema_defaults(workdir):
    cfg = compose(["experiment=ae_latent", "paths.data=rel/data"])
    assert cfg.paths.data == str(workdir / "rel" / "data")
    assert cfg.train.optimizer.name == "adam" and cfg.model.name == "conv_ae"
    assert cfg.experiment == "ae_latent"


def test_missing_required_value_is_reported():
    with pytest.raises(ConfigError, match="train.epochs"):
        compose(["train.epochs=null", "train.max_steps=null"])


def test_sweep_expansion_names_and_grid(workdir):
    p = plan(["sweep=ae_latent"])
    assert p.group == "ae_latent"
    assert [c.model.latent_dim for c in p.runs] == [2, 4, 8, 16, 32, 64, 128, 256]
    assert [c.run_name for c in p.runs][:2] == ["latent_dim-2", "latent_dim-4"]
    assert all(c.run_group == "ae_latent" and c.experiment == "ae_latent" for c in p.runs)


def test_command_line_axis_and_smoke_subset(workdir):
    p = plan(["sweep=ae_latent", "preset=smoke", "model.upsampling=transpose,bilinear"])
    assert [c.model.latent_dim for c in p.runs] == [2, 2, 256, 256]
    assert [c.model.upsampling for c in p.runs] == ["transpose", "bilinear"] * 2
    assert len({c.run_name for c in p.runs}) == 4
    assert p.runs[1].run_name == "latent_dim-2__upsampling-bilinear"


def test_run_names_are_stable_and_collision_free():
    points = [{"a.x": "1", "b.x": "2"}, {"a.x": "1", "b.x": "2"}, {"a.x": "3/4", "b.x": "5"}]
    names = run_names(points)
    assert names == ["a-x-1__b-x-2-1", "a-x-1__b-x-2-2", "a-x-3-4__b-x-5"]  # full keys: both end in .x
    assert run_names([{"model.hidden": "[]"}, {"model.hidden": "[512]"}]) == ["hidden-none", "hidden-512"]
    assert subset(list(range(8)), 3) == [0, 4, 7]


@pytest.mark.parametrize(
    "overrides, mode",
    [
        (["experiment=fmnist_cnn"], "max"),  # val/acc
        (["experiment=fmnist_cnn", "train.monitor=val/loss"], "min"),  # the direction follows the metric
        (["experiment=brain_seg"], "max"),  # val/dice
        (["experiment=ae_latent"], "min"),  # val/mse
        (["experiment=fmnist_cnn", "train.monitor=val/loss", "train.monitor_mode=max"], "max"),  # explicit wins
    ],
)
def test_monitor_mode_auto_maximises_accuracy_like_metrics(overrides, mode):
    assert compose(overrides).train.monitor_mode == mode


def test_unknown_optimizer_name_in_a_task_config_is_refused():
    """train.optimizer.name is checked with the config; a task's own per-model optimizer
    configs reach build_optimizer directly, which must not fall back to SGD."""
    import torch
    from omegaconf import OmegaConf

    from hpclab.engine.build import build_optimizer

    params = [torch.nn.Parameter(torch.zeros(2))]
    base = {"lr": 0.1, "betas": [0.9, 0.999], "weight_decay": 0.0, "momentum": 0.9}
    assert isinstance(build_optimizer(iter(params), OmegaConf.create({**base, "name": "sgd"}), False), torch.optim.SGD)
    with pytest.raises(ConfigError, match="'rmsprop' is not one of adam, adamw, sgd"):
        build_optimizer(iter(params), OmegaConf.create({**base, "name": "rmsprop"}), False)


CONFIGS = REPO / "configs"


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_its_model_and_task_keys_match_their_classes(name):
    """Discovered, not listed: a new experiment file is checked without touching a test."""
    cfg = compose([f"experiment={name}"])
    assert cfg.experiment == name and cfg.model.name and cfg.task.name


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONFIGS / "sweep").glob("*.yaml")))
def test_every_sweep_expands_into_valid_runs(name):
    """Each run equals Hydra's own composition of its overrides (the grid points share one
    composition in compose_many) and a task's lone run(i) equals the i-th of the whole plan."""
    swept = plan([f"sweep={name}"])
    runs = swept.runs
    assert runs and len({r.run_name for r in runs}) == len(runs)
    for overrides, cfg in zip(swept.run_overrides, runs):
        assert OmegaConf.to_container(cfg) == OmegaConf.to_container(compose_with_hydra(overrides)), overrides
    alone = plan([f"sweep={name}"])
    assert OmegaConf.to_container(alone.run(len(alone) - 1)) == OmegaConf.to_container(runs[-1])
    # where `status` looks without composing is where each run writes
    assert [swept.run_dir(i) for i in range(len(swept))] == [run_dir_of(cfg) for cfg in runs]


@pytest.mark.parametrize("axis", ["paths.results=a,b", "paths.data=a,b"])
def test_a_sweep_axis_cannot_move_runs_between_folders(axis):
    with pytest.raises(ConfigError, match="would move runs between folders"):
        plan(["sweep=ae_latent", axis])


def test_a_run_name_axis_names_identical_runs_after_its_values():
    swept = plan(["experiment=ae_latent", "run_name=a,b"])
    assert swept.run_names == ["run_name-a", "run_name-b"] == [cfg.run_name for cfg in swept.runs]


@pytest.mark.parametrize(
    "overrides",
    [
        ["experiment=ae_latent", "train.optimizer.lr=0.1", "data.classes=[0,1]", "train.max_steps=null", "notes='a b'"],
        ["model.latent_dim=3", "experiment=ae_latent", "~analysis", "train.scheduler=${train.optimizer}"],
        ["experiment=dcgan", "+model.extra=1"],
        ["experiment=ae_latent", "model.bogus=1"],
        ["experiment=ae_latent", "train.batch_size=abc"],
        ["experiment=ae_latent", "train.nokey=1"],
    ],
)
def test_compose_equals_hydra_composition_results_and_refusals_alike(overrides):
    def outcome(function):
        try:
            return OmegaConf.to_container(function(overrides))
        except ConfigError as exc:
            return f"error: {exc}"

    assert outcome(compose) == outcome(compose_with_hydra)


def _doc_section(path: str, title: str) -> str:
    text = (REPO / path).read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


@pytest.mark.slow
def test_add_an_experiment_section_works_as_written(tmp_path):
    """docs/configs.md "Add an experiment", word for word: its two files written into a copy of the
    project, then its quick-look command run there on staged digits."""
    import os
    import re
    import shutil
    import subprocess
    import sys

    section = _doc_section("docs/configs.md", "Add an experiment")
    project = tmp_path / "project"
    for part in ("hpclab", "configs", "jobs"):
        shutil.copytree(REPO / part, project / part, ignore=shutil.ignore_patterns("__pycache__"))
    blocks = re.findall(r"```(?:python|yaml)\n# (\S+)\n(.*?)```", section, re.S)
    assert [path for path, _ in blocks] == ["hpclab/models/tiny_mlp.py", "configs/experiment/tiny_mlp.yaml"]
    for path, body in blocks:
        (project / path).write_text(body)
    command = re.search(r"```bash\n(python jobs/launch.py experiment=tiny_mlp preset=smoke data=digits)", section)[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(project),
        "HPCLAB_DATA": str(tmp_path / "data"),
        "HPCLAB_RESULTS": str(tmp_path / "results"),
    }

    def run(args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *args], cwd=project, env=env, capture_output=True, text=True, timeout=600
        )

    assert run(["jobs/prepare_data.py", "data=digits"]).returncode == 0
    proc = run(command.split()[1:])
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "results" / "tiny_mlp-smoke" / "default" / "summary.json").read_text())
    assert summary["status"] == "completed" and 0 <= summary["metrics"]["test/acc"] <= 1
    assert summary["parameters"]["model"] == 64 * 128 + 128 + 128 * 10 + 10  # 8x8 digits, hidden 128
    bad = run(["jobs/launch.py", "experiment=tiny_mlp", "model.hiden=3", "dry_run=true"])
    assert bad.returncode == 2 and bad.stderr.startswith("error: config key 'model.hiden':")


# --------------------------------------------------------------------------- a newcomer's first commands


def test_show_prints_the_composed_config_of_a_run_or_of_a_sweeps_first_run(workdir):
    """Hydra's ``--cfg job``: ``launch.py show`` prints the validated config (valid YAML), a
    section or one value; ``--help`` says which sections of keys exist; Hydra's flag gets one line."""
    proc = run_cli("launch.py", "show", "sweep=ae_latent", "preset=smoke", cwd=workdir)
    lines = proc.stdout.splitlines()
    assert (
        lines[0].startswith("# run 1 of 2 of sweep 'ae_latent-smoke' (latent_dim-2) -> ")
        and "model.latent_dim" in lines[1]
    )
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.model.latent_dim == 2 and cfg.train.max_steps == 200 and cfg.run_name == "latent_dim-2"
    value = run_cli(
        "launch.py", "show", "experiment=ae_latent", "train.optimizer.lr=0.01", "train.optimizer.lr", cwd=workdir
    )
    assert value.stdout == "0.01\n"
    section = OmegaConf.create(
        run_cli("launch.py", "show", "experiment=ae_latent", "train.optimizer", cwd=workdir).stdout
    )
    assert set(section) == {"name", "lr", "weight_decay", "momentum", "betas"}
    typo = run_cli("launch.py", "show", "experiment=ae_latent", "train.lr", cwd=workdir, check=False)
    assert typo.returncode == 2 and typo.stderr.splitlines() == [
        "error: show: no key 'train.lr' in this config; did you mean train.optimizer.lr?"
    ]
    usage = " ".join(run_cli("launch.py", "--help", cwd=workdir).stdout.split())
    assert "python jobs/launch.py show experiment=ae_latent" in usage
    assert "train.optimizer. name, lr, weight_decay, momentum, betas" in usage and "cluster. name, processes," in usage
    hydra = run_cli("launch.py", "--cfg", "job", "experiment=ae_latent", cwd=workdir, check=False)
    assert hydra.returncode == 2 and hydra.stderr.splitlines() == [
        "error: --cfg is Hydra's; print the composed config with: python jobs/launch.py show <the same overrides> [KEY]"
    ]
    assert not (workdir / "results").exists()


NO_MULTIRUN = (
    "a sweep needs no flag here: sweep=NAME or a comma list (model.latent_dim=2,16) runs every "
    "combination, locally or with cluster=slurm as one job array"
)
RUN_DIR = (
    "error: hydra.run.dir is not used here: a run is written to paths.results/<experiment>/<run_name>/: set "
    "paths.results=DIR (or HPCLAB_RESULTS=DIR) and run_name=NAME"
)


@pytest.mark.parametrize(
    "script, args, line",
    [
        (
            "launch.py",
            ["train.lr=0.1"],
            "error: config key 'train.lr': Key 'lr' not in 'TrainConfig'; did you mean train.optimizer.lr?",
        ),
        (
            "launch.py",
            ["model.laten_dim=4"],
            "error: config key 'model.laten_dim': Key 'laten_dim' is not in struct; did you mean model.latent_dim?",
        ),
        (
            "launch.py",
            ["+model.laten_dim=4"],
            "error: config key 'model.laten_dim': not a parameter of model 'conv_ae'; did you mean model.latent_dim? "
            "(parameters: latent_dim, channels, upsampling)",
        ),
        (
            "launch.py",
            ["train.epoch=3"],
            "error: config key 'train.epoch': Key 'epoch' not in 'TrainConfig'; did you mean train.epochs?",
        ),
        (
            "launch.py",
            ["batch_size=32"],
            "error: config key 'batch_size': Key 'batch_size' not in 'RunConfig'; did you mean train.batch_size?",
        ),
        ("launch.py", ["-m"], f"error: -m is Hydra's; {NO_MULTIRUN}"),
        ("run.py", ["--multirun"], f"error: --multirun is Hydra's; {NO_MULTIRUN}"),
        ("launch.py", ["hydra.run.dir=out"], RUN_DIR),
        (
            "launch.py",
            ["hydra.sweep.dir=out"],
            "error: hydra.sweep.dir is not used here: a sweep is written to "
            "paths.results/<sweep.name>/<run>/: set paths.results=DIR (or "
            "HPCLAB_RESULTS=DIR) and sweep.name=NAME",
        ),
        ("prepare_data.py", ["hydra.run.dir=out"], RUN_DIR),
    ],
)
def test_typos_and_hydra_habits_get_one_line_with_what_to_type_instead(workdir, script, args, line):
    """An unknown key names the nearest valid ones; Hydra's -m/--multirun and hydra.*.dir (a
    token error and silence before) say what this suite uses instead. Nothing is written."""
    proc = run_cli(script, "experiment=ae_latent", *args, "dry_run=true", cwd=workdir, check=False)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [line], proc.stderr
    assert not (workdir / "results").exists() and not (workdir / "out").exists()


def git_checkout_problem() -> str | None:
    """Why REPO is no git checkout here (the image's copy of the project has no .git, nor git)."""
    import shutil

    if not shutil.which("git") or not (REPO / ".git").exists():
        return f"{REPO} is not a git checkout with git installed (as inside the image)"
    return None


def test_the_site_file_is_ignored_by_git():
    """configs/local/default.yaml holds one site's settings: git keeps it out of commits."""
    import subprocess

    requires(git_checkout_problem)
    site = REPO / "configs" / "local" / "default.yaml"
    ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", str(site)], timeout=30)
    assert ignored.returncode == 0, "configs/local/default.yaml must be ignored by git"


def test_a_site_file_sets_cluster_settings_once(tmp_path):
    """lightning-hydra-template's ``optional local``: configs/local/default.yaml (from its
    committed .example) is read by every command, and the command line still wins."""
    import os
    import shutil
    import subprocess
    import sys

    project = tmp_path / "project"
    for part in ("hpclab", "configs", "jobs"):
        shutil.copytree(REPO / part, project / part, ignore=shutil.ignore_patterns("__pycache__", "default.yaml"))
    example = (project / "configs" / "local" / "default.yaml.example").read_text()
    (project / "configs" / "local" / "default.yaml").write_text(
        example.replace("partition: gpu", "partition: cpu_long")
    )
    env = {**os.environ, "PYTHONPATH": str(project), "HPCLAB_RESULTS": str(tmp_path / "results")}

    def show(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "jobs/launch.py", "show", *args],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert (
        show("cluster=slurm", "cluster.partition") == "cpu_long"
        and show("cluster=slurm", "cluster.account") == "myproj"
    )
    assert show("cluster=slurm_cpu", "cluster.partition=debug", "cluster.partition") == "debug"
    assert show("cluster=slurm_cpu", "cluster.gpus_per_node") == "0"


def test_readme_states_times_only_as_measured():
    """A time in a README command's comment (``# ... (about 1 minute)``) says what was measured
    and on what; the quick look took 49-283 s depending on the machine's load."""
    import re

    text = (REPO / "README.md").read_text()
    claims = re.findall(r"#[^\n]*\b\d[\d.,]*\s*(?:s|min|minutes?|h|hours?)\b[^\n]*", text)
    assert claims, "the quick look's command should say how long it took"
    for claim in claims:
        assert "measured" in claim, claim
