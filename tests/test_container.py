"""The image's recipe, build script and lock, and how SLURM tasks enter it (Apptainer or podman).

What needs no container engine is checked here for real: the Apptainer definition parses
(spython's Singularity recipe parser) and runs the same install steps, files, environment and
labels as the Containerfile (one recipe, no drift), the image's entry point and self-test run
against the checkout, the packages it installs are exactly constraints.txt, build.sh picks an
engine and fails clearly without one, and the command lines a task enters the image with follow
the same rules for both engines. tests/test_container_run.py builds on a real image (podman).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, path_without, requires, run_cli
from formats.dist_info import write_dist_info
from omegaconf import OmegaConf
from packaging.utils import canonicalize_name

from hpclab.config import ConfigError, compose
from hpclab.launch import container

DEF = REPO / "containers" / "hpclab.def"
CONTAINERFILE = REPO / "containers" / "Containerfile"
INSTALL = REPO / "containers" / "install.sh"
BUILD = REPO / "containers" / "build.sh"
RELAY = REPO / "containers" / "scontrol-relay"
ENTRYPOINT = REPO / "containers" / "entrypoint.sh"
HOME = "/opt/hpclab"  # where the recipe puts the project inside the image
# The image's PATH starts with its Python; outside it, this test's interpreter stands in (CI
# runs pytest through the venv's python without activating the venv).
IMAGE_PATH = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
STAGE_RUN = f"sh {HOME}/containers/install.sh"


def raw_sections(text: str) -> dict[str, str]:
    """Section name -> dedented body, as Apptainer splits a definition ('' is the header)."""
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        if line.startswith("%"):
            current = line[1:].split()[0].lower()
            sections[current] = []
        else:
            sections[current].append(line)
    return {name: textwrap.dedent("\n".join(body)).strip() + "\n" for name, body in sections.items()}


def containerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Containerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", CONTAINERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def assignments(text: str) -> dict[str, str]:
    """KEY=VALUE words (Containerfile ENV/LABEL/ARG) as a dict, quotes removed."""
    return dict(word.split("=", 1) for word in shlex.split(text))


@pytest.fixture(scope="module")
def recipe():
    from spython.main.parse.parsers import SingularityParser

    return SingularityParser(str(DEF)).recipe["spython-base"]


@pytest.fixture(scope="module")
def sections() -> dict[str, str]:
    return raw_sections(DEF.read_text())


def pins_of(path: Path) -> dict[str, str]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return {canonicalize_name(line.split("==")[0]): line.split("==")[1] for line in lines if line}


def resolved_closure(requirements: list[str]) -> dict[str, str]:
    """What pip installs for ``requirements`` here: scripts/freeze_constraints.py's closure."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("freeze_constraints", REPO / "scripts" / "freeze_constraints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.closure(requirements)


# --------------------------------------------------------------------------- one recipe


def test_definition_parses_and_its_base_is_a_build_argument(recipe, sections):
    assert sections[""].splitlines()[:2] == ["Bootstrap: docker", "From: {{ BASE }}"]
    assert recipe.fromHeader == "{{ base }}"  # spython lower-cases image names
    assert {"arguments", "files", "post", "environment", "runscript", "test", "labels", "help"} <= set(sections)
    assert recipe.cmd and recipe.test  # spython turned %runscript and %test into scripts
    # One default base for both builds (and build.sh), overridable in all three.
    declared = dict(line.split("=", 1) for line in sections["arguments"].split())
    args = [assignments(a) for i, a in containerfile() if i == "ARG"]
    default = re.search(r'^DEFAULT_BASE="(.+)"$', BUILD.read_text(), re.M).group(1)
    assert declared["BASE"] == args[0]["BASE"] == default == "python:3.11.7-slim-bookworm"
    assert containerfile()[1] == ("FROM", "${BASE}")


def test_both_builds_run_only_the_install_script_with_every_stage(recipe, sections):
    """The install steps exist once: %post and every RUN are containers/install.sh stages."""
    assert sections["post"].strip() == f"{STAGE_RUN} all"
    runs = [args for instruction, args in containerfile() if instruction == "RUN"]
    stages = re.search(r'^STAGES="(.+)"$', INSTALL.read_text(), re.M).group(1).split()
    assert runs == [f"{STAGE_RUN} {stage}" for stage in stages] and stages == ["system", "deps", "project"]
    assert {i for i, _ in containerfile()} <= {"ARG", "FROM", "COPY", "RUN", "ENV", "LABEL", "ENTRYPOINT"}
    proc = subprocess.run(["sh", str(INSTALL), "nonsense"], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_both_builds_copy_the_same_files_and_dependencies_come_first(recipe):
    """%files and COPY put the same sources at the same places; before the wheels are
    installed the Containerfile copies only the install script and the lock, so a code change
    keeps the dependency layer."""
    files = dict(line.split() for line in recipe.files)
    steps = containerfile()
    copies = [tuple(args.split()) for i, args in steps if i == "COPY"]
    for source, destination in copies:
        covered = [
            s
            for s, d in files.items()
            if (source, destination) == (s, d)
            or (source.startswith(s + "/") and destination == f"{d}/{source[len(s) + 1 :]}")
        ]
        assert covered, f"COPY {source} {destination} is not in the definition's %files"
    assert set(files.items()) <= set(copies)
    for source, destination in files.items():
        assert (REPO / source).exists(), f"%files source {source} is missing (build.sh runs from the repo root)"
        assert destination == f"{HOME}/{source}"
    assert set(files) == {
        "pyproject.toml",
        "constraints.txt",
        "README.md",
        "hpclab",
        "jobs",
        "configs",
        "slurm",
        "scripts",
        "tests",
        "benchmarks",
        "containers",
    }
    deps = steps.index(("RUN", f"{STAGE_RUN} deps"))
    before = [args.split()[0] for i, args in steps[:deps] if i == "COPY"]
    assert before == ["containers/install.sh", "constraints.txt"]
    # The build arguments that change with every commit come after every RUN (cache keys).
    last_run = max(n for n, (i, _) in enumerate(steps) if i == "RUN")
    assert all(n > last_run for n, (i, a) in enumerate(steps) if i == "ARG" and "GIT_COMMIT" in a)


def test_environment_is_the_same_fixed_set_in_both_images(sections):
    """Apptainer sources %environment with the host's variables cleared and OCI ENV ignores
    them too: so no ${VAR:-default} pretending a host value could win, the same values in
    both, and no TORCH_HOME/HF_HOME that an --env HPCLAB_CACHE=... would leave behind."""
    exports = {k: shlex.split(v)[0] for k, v in re.findall(r"^export (\w+)=(.+)$", sections["environment"], re.M)}
    assert "${" not in sections["environment"] and "$" not in "".join(exports.values()).replace("{{ GIT_COMMIT }}", "")
    env = {}
    for instruction, args in containerfile():
        if instruction == "ENV":
            env.update(assignments(args))
    assert exports == {**env, "HPCLAB_GIT_COMMIT": "{{ GIT_COMMIT }}"} and env["HPCLAB_GIT_COMMIT"] == "${GIT_COMMIT}"
    assert exports["HPCLAB_DATA"] == "/shared/data" and exports["PYTHONNOUSERSITE"] == "1"
    assert exports["PATH"].startswith("/opt/venv/bin:") and exports["HPCLAB_HOME"] == HOME
    assert not {"TORCH_HOME", "HF_HOME"} & set(exports)
    # ... and the runs themselves point TORCH_HOME at paths.cache (what --env HPCLAB_CACHE sets).
    from hpclab.weights import use_cache

    saved = {k: os.environ.get(k) for k in ("TORCH_HOME", "HF_HOME")}
    try:
        os.environ.pop("HF_HOME", None)
        use_cache("/scratch/me/cache")
        assert (
            os.environ["TORCH_HOME"] == "/scratch/me/cache" and os.environ["HF_HOME"] == "/scratch/me/cache/huggingface"
        )
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def test_labels_and_build_arguments_agree(recipe, sections):
    labels = dict(line.split(" ", 1) for line in recipe.labels)
    oci = {}
    for instruction, args in containerfile():
        if instruction == "LABEL":
            oci.update(assignments(args))
    assert labels["org.opencontainers.image.version"] == "{{ HPCLAB_VERSION }}"
    assert labels["org.opencontainers.image.revision"] == "{{ GIT_COMMIT }}"
    assert {k: re.sub(r"\{\{ (\w+) \}\}", r"${\1}", v) for k, v in labels.items()} == oci
    declared = {line.split("=", 1)[0] for line in sections["arguments"].split()}
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", DEF.read_text()))
    passed = set(re.findall(r'--build-arg "(\w+)=', BUILD.read_text()))
    oci_args = {name for i, a in containerfile() if i == "ARG" for name in assignments(a)}
    # Apptainer fails on an undeclared template variable and on an unused --build-arg.
    assert used == declared == passed == oci_args == {"BASE", "HPCLAB_VERSION", "GIT_COMMIT"}


def test_runscript_entrypoint_and_help(sections):
    assert sections["runscript"].strip() == f'exec {HOME}/containers/entrypoint.sh "$@"'
    assert sections["test"].strip() == f"exec sh {HOME}/containers/selftest.sh"
    assert containerfile()[-1] == ("ENTRYPOINT", f'["{HOME}/containers/entrypoint.sh"]')
    env = {**os.environ, "HPCLAB_HOME": str(REPO), "PATH": IMAGE_PATH}
    for args, usage in (
        [[], "jobs/launch.py"],
        [["--help"], "jobs/launch.py"],
        [["launch", "--help"], "jobs/launch.py"],
        [["prepare_data", "--help"], "jobs/prepare_data.py"],
    ):
        proc = subprocess.run(["sh", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert f"usage: python {usage}" in proc.stdout
    # Any other command runs as given: "podman run IMAGE python -m ..." like "apptainer exec".
    proc = subprocess.run(
        ["sh", str(ENTRYPOINT), "sh", "-c", "echo $0", "passed"], env=env, capture_output=True, text=True
    )
    assert proc.stdout == "passed\n"
    # Every example in %help binds a writable folder (the SIF itself is read-only).
    examples = [line.strip() for line in sections["help"].splitlines() if line.strip().startswith("apptainer run")]
    assert len(examples) == 3 and all("--bind " in line for line in examples)
    assert "--env HPCLAB_DATA=" in sections["help"]


@pytest.mark.slow
def test_self_test_runs_the_lock_check_and_the_cpu_smoke_experiment(tmp_path):
    """containers/selftest.sh (%test; "IMAGE selftest") with the checkout standing in for /opt/hpclab."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCLAB_")}
    proc = subprocess.run(
        ["sh", str(REPO / "containers" / "selftest.sh")],
        env={**env, "HPCLAB_HOME": str(REPO), "TMPDIR": str(tmp_path), "PATH": IMAGE_PATH},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "environment matches" in proc.stdout and "smoke run: test/mse" in proc.stdout
    assert "hpclab image self-test passed" in proc.stdout
    assert not list(tmp_path.glob("tmp.*"))  # its work directory (mktemp -d) was removed


# --------------------------------------------------------------------------- the lock


def test_install_script_installs_the_lock_only():
    """Every pip install of containers/install.sh takes its versions from constraints.txt
    (-r for the wheels, -c for the project), pins and upgrades nothing itself, and the project
    step is offline, so it can only use what the dependency step installed from the lock."""
    text = INSTALL.read_text()
    pip_lines = [line.strip() for line in text.splitlines() if re.search(r"-m pip (install|download)\b", line)]
    assert len(pip_lines) == 4
    for line in pip_lines:
        args = shlex.split(line.replace('"$lock"', "constraints.txt").replace("$lock", "constraints.txt"))
        lock = args[args.index("-r") + 1] if "-r" in args else args[args.index("-c") + 1]
        assert lock == "constraints.txt", line
        assert not any("==" in a or a in ("-U", "--upgrade") for a in args), f"pin or upgrade outside the lock: {line}"
    project = [line for line in pip_lines if '-e ".[dev]"' in line]
    assert len(project) == 1 and "--no-index" in project[0]
    assert '"$PY" containers/verify_lock.py --constraints constraints.txt' in text
    assert "PIP_CONFIG_FILE=/dev/null" in text  # not the build machine's find-links / indexes


def test_lock_pins_exactly_what_the_project_resolves_to():
    """constraints.txt = pip's resolution of ``-e .[dev]`` (what the image and CI install)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    closure = resolved_closure(project["dependencies"] + project["optional-dependencies"]["dev"])
    closure.pop("hpclab", None)
    lock = pins_of(REPO / "constraints.txt")
    assert not set(closure) - set(lock), (
        f"resolved but not pinned (unpinned in the image): {sorted(set(closure) - set(lock))}"
    )
    assert not set(lock) - set(closure), f"pinned but not needed: {sorted(set(lock) - set(closure))}"
    assert closure == lock


def test_verify_lock_rejects_any_difference(tmp_path):
    lock = tmp_path / "constraints.txt"
    lock.write_text("# lock\nnumpy==2.4.6\nPyYAML==6.0.3\n")
    site = tmp_path / "site"
    for name, version in (("numpy", "2.4.6"), ("PyYAML", "6.0.3"), ("pip", "23.2.1")):
        write_dist_info(site, name, version)

    def verify() -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                str(REPO / "containers" / "verify_lock.py"),
                "--constraints",
                str(lock),
                "--path",
                str(site),
            ],
            capture_output=True,
            text=True,
        )

    assert verify().returncode == 0
    write_dist_info(site, "nvidia-nvjitlink", "13.5.37")
    proc = verify()
    assert proc.returncode == 1 and "nvidia-nvjitlink==13.5.37 is installed but not pinned" in proc.stderr
    lock.write_text(lock.read_text() + "nvidia-nvjitlink==13.2.86\nscipy==1.17.1\n")
    proc = verify()
    assert "nvidia-nvjitlink is 13.5.37, the lock pins 13.2.86" in proc.stderr
    assert "scipy==1.17.1 is pinned but not installed" in proc.stderr


# --------------------------------------------------------------------------- entering the image


def test_bind_paths_are_the_configured_paths(tmp_path):
    cfg = compose(
        [
            "cluster=slurm",
            f"paths.data={tmp_path}/data",
            f"paths.results={tmp_path}/results",
            "cluster.binds=[/site/slurm:/etc/slurm:ro]",
        ]
    )
    assert set(cfg.paths) == {"data", "results", "cache"} and cfg.paths.cache == f"{tmp_path}/data/cache"
    # The default cache (data/cache) and submitit folder (results/<sweep>/.submitit) are covered
    # by their parents' binds; a cache or folder elsewhere gets its own; site binds come verbatim.
    folder = tmp_path / "results" / "ae_latent" / ".submitit"
    assert container.bind_args(cfg.cluster, cfg.paths, folder) == [
        "--bind",
        f"{tmp_path}/data",
        "--bind",
        f"{tmp_path}/results",
        "--bind",
        "/site/slurm:/etc/slurm:ro",
    ]
    paths = {**cfg.paths, "cache": f"{tmp_path}/weights"}
    assert container.project_dirs(paths, tmp_path / "submitit") == [
        f"{tmp_path}/data",
        f"{tmp_path}/results",
        f"{tmp_path}/weights",
        f"{tmp_path}/submitit",
    ]
    with pytest.raises(ConfigError, match="paths.data"):
        container.project_dirs({**cfg.paths, "data": "/a,b"})


def engine_stub(tmp_path: Path, *names: str) -> Path:
    """A directory of stand-ins for container engines, to put on PATH (they only need to exist)."""
    stub = tmp_path / "engines"
    stub.mkdir(exist_ok=True)
    for name in names:
        (stub / name).write_text("#!/bin/sh\nexit 0\n")
        (stub / name).chmod(0o755)
    return stub


def test_exec_prefix_and_python(monkeypatch, tmp_path):
    monkeypatch.delenv("HPCLAB_IMAGE", raising=False)
    monkeypatch.delenv("HPCLAB_CONTAINER", raising=False)
    paths = {"data": "/d", "results": "/r", "cache": "/d/cache"}
    cluster = OmegaConf.create({"image": None, "container": None, "gpus_per_node": 4, "binds": []})
    assert container.exec_prefix(cluster, paths) == [] and container.container_python(cluster, paths) == sys.executable
    monkeypatch.setenv("HPCLAB_IMAGE", "/images/my image.sif")
    python = container.container_python(cluster, paths)
    assert python == (
        "apptainer exec --nv --bind /d --bind /r --env HPCLAB_DATA=/d --env HPCLAB_RESULTS=/r "
        "--env HPCLAB_CACHE=/d/cache --env TORCH_HOME=/d/cache --env HF_HOME=/d/cache/huggingface "
        "--env HPCLAB_CONTAINER_ENGINE=apptainer --env 'HPCLAB_CONTAINER_IMAGE=/images/my image.sif' "
        "--env PYTHONPATH= --env PYTHONHOME= '/images/my image.sif' python"
    )
    cluster.gpus_per_node = 0
    cluster.image = "/x/hpclab.sif"  # the config wins over $HPCLAB_IMAGE
    assert shlex.split(container.container_python(cluster, paths))[:3] == ["apptainer", "exec", "--bind"]
    assert shlex.split(container.container_python(cluster, paths))[-2:] == ["/x/hpclab.sif", "python"]
    with pytest.raises(ConfigError, match="cluster.image.*containers/build.sh"):
        container.check_image(cluster)
    (tmp_path / "hpclab.sif").write_bytes(b"SIF")
    cluster.image = str(tmp_path / "hpclab.sif")
    monkeypatch.setenv("PATH", f"{engine_stub(tmp_path, 'apptainer')}:{os.environ['PATH']}")
    container.check_image(cluster)


def test_podman_prefix_follows_the_same_rules(monkeypatch, tmp_path):
    """Same folders at the same paths, same variables, the host's namespaces as Apptainer has
    them, GPUs through CDI; but podman passes no host variable unless named, so the host's
    Python settings cannot leak in and SLURM's variables are passed by name."""
    monkeypatch.setenv("PYTHONPATH", "/home/me/lib")
    paths = {"data": "/d", "results": "/r", "cache": "/w"}
    cluster = OmegaConf.create(
        {
            "image": "localhost/hpclab:0.1.0-abc",
            "container": "podman",
            "gpus_per_node": 0,
            "binds": ["/site", "/scratch/x:/x:ro"],
        }
    )
    prefix = container.exec_prefix(cluster, paths, "/r/sweep/.submitit")
    assert prefix[:4] == ["sh", "-c", 'export HPCLAB_PARENT_PID=$$; exec "$@"', "hpclab-task"]
    assert prefix[4:10] == ["podman", "run", "--rm", "--network=host", "--ipc=host", "--pid=host"]
    assert "--device" not in prefix and prefix[-3:] == ["--label", "hpclab.slurm_job=$SLURM_JOB_ID", cluster.image]
    volumes = [prefix[i + 1] for i, a in enumerate(prefix) if a == "--volume"]
    assert volumes == ["/d:/d", "/r:/r", "/w:/w", "/site:/site", "/scratch/x:/x:ro"]  # podman needs src:dst
    env = [prefix[i + 1] for i, a in enumerate(prefix) if a == "--env"]
    apptainer = container.exec_prefix({**cluster, "container": "apptainer", "image": "/x.sif"}, paths)
    shared = [apptainer[i + 1] for i, a in enumerate(apptainer) if a == "--env"][:5]
    assert env[:5] == shared and env[5:7] == [
        "HPCLAB_CONTAINER_ENGINE=podman",
        "HPCLAB_CONTAINER_IMAGE=localhost/hpclab:0.1.0-abc",
    ]
    assert env[7:] == list(container.PODMAN_PASS) and not any(e.startswith("PYTHON") for e in env)
    assert "SLURM_*" in env and "HPCLAB_REQUEUE_FILE" in env
    cluster.gpus_per_node = 2
    gpu = container.exec_prefix(cluster, paths)
    assert gpu[gpu.index("--device") + 1] == "nvidia.com/gpu=all"
    # In the batch script's command line the label takes the job id from the shell.
    python = container.container_python(cluster, paths)
    assert ' --label "hpclab.slurm_job=$SLURM_JOB_ID" localhost/hpclab:0.1.0-abc python' in python
    out = subprocess.run(
        ["bash", "-c", f"printf '%s\\n' {python}"],
        env={"SLURM_JOB_ID": "77_1", "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert out[-3:] == ["hpclab.slurm_job=77_1", "localhost/hpclab:0.1.0-abc", "python"]
    # A podman image is a reference, not a path; an unknown engine is named.
    assert container.image_of(cluster) == "localhost/hpclab:0.1.0-abc"
    with pytest.raises(ConfigError, match="cluster.container': 'docker' is not one of apptainer, singularity, podman"):
        container.engine_of({"container": "docker"})


def test_singularity_runs_the_image_where_apptainer_is_missing(monkeypatch, tmp_path):
    """SingularityCE >= 4 builds and runs the same definition: tasks then call it, not apptainer."""
    monkeypatch.delenv("HPCLAB_CONTAINER", raising=False)
    stub = engine_stub(tmp_path, "singularity")
    path = f"{stub}:" + ":".join(d for d in os.environ["PATH"].split(":") if not (Path(d) / "apptainer").exists())
    monkeypatch.setenv("PATH", path)
    cluster = {"image": "/x/hpclab.sif", "gpus_per_node": 1}
    assert container.engine_of(cluster) == "singularity"
    assert container.exec_prefix(cluster, {"data": "/d", "results": "/r", "cache": "/d/c"})[:3] == [
        "singularity",
        "exec",
        "--nv",
    ]
    (stub / "apptainer").write_text("#!/bin/sh\n")
    (stub / "apptainer").chmod(0o755)
    assert container.engine_of(cluster) == "apptainer"  # both: apptainer


def test_bad_container_settings_fail_before_submitting_with_one_line(fmnist_data, monkeypatch, tmp_path):
    """A missing engine, a missing image, a missing bind source: one line naming the fix,
    exit 2, and nothing submitted (submissions.json is only written after sbatch answers)."""
    sif = tmp_path / "hpclab.sif"
    sif.write_bytes(b"SIF")
    base = ["sweep=ae_latent", "preset=smoke", "cluster=slurm", "cluster.gpus_per_node=0"]
    no_engines = path_without(tmp_path, "apptainer", "singularity", "podman")
    cases = [
        (
            [f"cluster.image={sif}"],
            {"PATH": no_engines},
            f"error: config key 'cluster.container': apptainer not found on PATH on {socket.gethostname()}: load it",
        ),
        (
            ["cluster.container=podman", "cluster.image=localhost/hpclab:1"],
            {"PATH": no_engines},
            f"error: config key 'cluster.container': podman not found on PATH on {socket.gethostname()}: install it",
        ),
        (
            [f"cluster.image={tmp_path}/missing.sif"],
            {},
            f"error: config key 'cluster.image': apptainer image {tmp_path}/missing.sif not found",
        ),
        (["cluster.image=localhost/hpclab:1"], {}, "error: config key 'cluster.image': apptainer image "),
        (
            [f"cluster.image={sif}", f"cluster.binds=[{tmp_path}/site:/site:ro]"],
            {"PATH": f"{engine_stub(tmp_path, 'apptainer')}:{os.environ['PATH']}"},
            f"error: config key 'cluster.binds': bind source {tmp_path}/site does not exist on {socket.gethostname()}",
        ),
        (
            ["cluster.image=/x.sif", "cluster.container=docker"],
            {},
            "error: config key 'cluster.container': 'docker' is not one of apptainer, singularity, podman",
        ),
    ]
    for overrides, env, expected in cases:
        proc = run_cli("launch.py", *base, *overrides, cwd=fmnist_data, env=env, check=False)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith(expected), (
            overrides,
            proc.stdout,
            proc.stderr,
        )
        assert proc.stderr.startswith(expected), (overrides, proc.stderr)
        assert not (fmnist_data / "results" / "ae_latent-smoke" / "submissions.json").exists()
    assert (
        "(an OCI image? set cluster.container=podman)"
        in run_cli("launch.py", *base, "cluster.image=localhost/hpclab:1", cwd=fmnist_data, check=False).stderr
    )


def srun_tokens(output: str) -> list[str]:
    lines = [line for line in output.splitlines() if line.startswith("srun ")]
    assert len(lines) == 1, output
    return shlex.split(lines[0])


def assert_enters_image(tokens: list[str], image: str, workdir: Path, gpus: bool, engine: str = "apptainer") -> None:
    start = tokens.index(engine)
    if engine == "podman":
        assert tokens[start - 4 : start] == container.PODMAN_WRAPPER
        assert tokens[start + 1 : start + 3] == ["run", "--rm"] and ("nvidia.com/gpu=all" in tokens) == gpus
    else:
        assert tokens[start + 1] == "exec" and ("--nv" in tokens) == gpus
    python = tokens.index("python", start)
    assert tokens[python - 1] == image
    assert tokens[python : python + 4] == ["python", "-u", "-m", "submitit.core._submit"]
    flag = "--volume" if engine == "podman" else "--bind"
    binds = [Path(tokens[i + 1].split(":")[0]) for i in range(start, python) if tokens[i] == flag]
    if engine == "podman":  # at the same path inside
        assert all(
            tokens[i + 1] == f"{b}:{b}" for b, i in zip(binds, [i for i in range(start, python) if tokens[i] == flag])
        )
    needed = [
        workdir / "data",
        workdir / "results",
        workdir / "data" / "cache",
        workdir / "results" / "ae_latent" / ".submitit",
    ]
    for path in needed:  # what the tasks open: each inside a bound directory
        assert any(path.is_relative_to(bind) for bind in binds), (path, binds)


def test_slurm_dry_run_renders_the_container_command(workdir, monkeypatch):
    requires(
        lambda: (
            None
            if shutil.which("srun")
            else "submitit renders SLURM scripts only where srun is on PATH (slurm-client; not in the image)"
        )
    )
    monkeypatch.delenv("HPCLAB_IMAGE", raising=False)
    monkeypatch.delenv("HPCLAB_CONTAINER", raising=False)
    out = run_cli(
        "launch.py", "sweep=ae_latent", "cluster=slurm", "cluster.image=/x/hpclab.sif", "dry_run=true", cwd=workdir
    ).stdout
    assert "apptainer exec --nv --bind" in out
    assert_enters_image(srun_tokens(out), "/x/hpclab.sif", workdir, gpus=True)
    assert not (workdir / "results").exists()  # a dry run writes nothing

    # The same through the package API (what the CLI calls), cheaper than more subprocesses:
    # $HPCLAB_IMAGE works like cluster.image; no GPUs asked for, no --nv; no image, plain python;
    # podman by $HPCLAB_CONTAINER, the leftover-container cleanup before the step.
    from hpclab.launch.submit import render_sbatch
    from hpclab.launch.sweep import plan

    monkeypatch.setenv("HPCLAB_IMAGE", "/images/hpclab.sif")
    sbatch = render_sbatch(plan(["sweep=ae_latent", "cluster=slurm", "cluster.gpus_per_node=0"]))
    assert_enters_image(srun_tokens(sbatch), "/images/hpclab.sif", workdir, gpus=False)
    monkeypatch.setenv("HPCLAB_CONTAINER", "podman")
    monkeypatch.setenv("HPCLAB_IMAGE", "localhost/hpclab:latest")
    sbatch = render_sbatch(plan(["sweep=ae_latent", "cluster=slurm"]))
    assert_enters_image(srun_tokens(sbatch), "localhost/hpclab:latest", workdir, gpus=True, engine="podman")
    assert 'podman ps -aq --filter "label=hpclab.slurm_job=$SLURM_JOB_ID" | xargs -r podman rm -f' in sbatch
    monkeypatch.delenv("HPCLAB_IMAGE")
    tokens = srun_tokens(render_sbatch(plan(["sweep=ae_latent", "cluster=slurm"])))
    assert "podman" not in tokens and tokens[tokens.index(sys.executable) :][:4] == [
        sys.executable,
        "-u",
        "-m",
        "submitit.core._submit",
    ]


def test_requeue_inside_the_image_is_relayed_to_the_batch_script(tmp_path):
    """submitit's 'scontrol requeue' inside the image reaches the real scontrol after the step."""
    host_bin, image_bin = tmp_path / "host-bin", tmp_path / "image-bin"
    for directory in (host_bin, image_bin):
        directory.mkdir()
    log = tmp_path / "scontrol.log"
    (host_bin / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    (host_bin / "scontrol").chmod(0o755)
    (image_bin / "scontrol").symlink_to(RELAY)  # as %files installs it
    for tool in ("readlink", "mv"):  # the image's PATH: its own tools, no SLURM client
        (image_bin / tool).symlink_to(shutil.which(tool))
    cluster = {"image": "/x/hpclab.sif", "gpus_per_node": 1, "binds": []}
    paths = {
        "data": str(tmp_path / "data"),
        "results": str(tmp_path / "results"),
        "cache": str(tmp_path / "data/cache"),
    }
    folder = tmp_path / "results" / ".submitit"
    setup = "\n".join(container.slurm_setup(cluster, paths, folder))
    env = {"PATH": f"{host_bin}:{os.environ['PATH']}", "SLURM_JOB_ID": "78"}

    # The batch script: setup lines, then the step, in which submitit (inside the image) asks
    # for the requeue after its checkpoint; then the batch script ends.
    step = f"PATH={image_bin} scontrol requeue 77_3"
    proc = subprocess.run(["bash", "-c", f"{setup}\n{step}\necho step done\n"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert log.read_text() == "requeue 77_3\n"  # once, by the batch script after the step
    assert "hpclab: tasks run in the apptainer image: apptainer exec --nv" in proc.stdout
    assert "requeue of 77_3 handed to the batch script" in proc.stderr
    assert not list(folder.glob(".requeue-*"))  # consumed: the requeued job (same id) does not loop
    assert all(Path(d).is_dir() for d in (*paths.values(), folder))  # bind sources exist

    # A step that ends without a request: no requeue.
    log.unlink()
    proc = subprocess.run(["bash", "-c", f"{setup}\necho step done\n"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and not log.exists()

    # Outside such a batch script the stand-in says what is missing and fails.
    proc = subprocess.run(["scontrol", "requeue", "1"], env={"PATH": str(image_bin)}, capture_output=True, text=True)
    assert proc.returncode == 1 and "HPCLAB_REQUEUE_FILE" in proc.stderr
    # A SLURM client that the site binds into the container is used directly.
    proc = subprocess.run(
        ["scontrol", "requeue", "5"], env={"PATH": f"{image_bin}:{host_bin}"}, capture_output=True, text=True
    )
    assert proc.returncode == 0 and log.read_text() == "requeue 5\n"


# --------------------------------------------------------------------------- build.sh


def test_build_script_fails_clearly_without_an_engine(tmp_path):
    env = {"PATH": path_without(tmp_path, "apptainer", "singularity", "podman", "buildah")}
    proc = subprocess.run(
        [str(BUILD), str(tmp_path / "hpclab.sif")], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "error: no container engine found (apptainer, singularity, podman, buildah): load Apptainer >= 1.2 "
        "(e.g. 'module load apptainer') or install podman (Debian/Ubuntu: apt-get install podman runc)"
    ]
    proc = subprocess.run([str(BUILD), "--engine", "podman"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.stderr.strip().splitlines() == [
        "error: podman not found on PATH: install it (Debian/Ubuntu: apt-get install podman runc) "
        "or choose another --engine"
    ]
    proc = subprocess.run([str(BUILD), "--engine", "apptainer"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.stderr.strip().splitlines()[-1].startswith("error: apptainer not found on PATH")
    assert "--engine podman" in proc.stderr
    proc = subprocess.run([str(BUILD), "--engine", "docker"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.stderr.strip() == "error: --engine docker: expected apptainer, podman or buildah"
    assert not (tmp_path / "hpclab.sif").exists()


FAKE_APPTAINER = """#!/bin/sh
if [ "$1" = --version ]; then echo "apptainer version $FAKE_VERSION"; exit 0; fi
pwd > "$FAKE_LOG"
for arg in "$@"; do echo "$arg" >> "$FAKE_LOG"; done
for arg in "$@"; do out="$prev"; prev="$arg"; done
printf 'SIF image bytes' > "$out"
"""


def test_build_script_runs_apptainer_build(tmp_path):
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "apptainer").write_text(FAKE_APPTAINER)
    (stub / "apptainer").chmod(0o755)
    log = tmp_path / "apptainer.log"
    image = tmp_path / "images" / "hpclab.sif"
    env = {**os.environ, "PATH": f"{stub}:{os.environ['PATH']}", "FAKE_LOG": str(log), "FAKE_VERSION": "1.3.4"}
    env.pop("HPCLAB_IMAGE", None)

    proc = subprocess.run([str(BUILD), str(image), "--notest"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    cwd, *args = log.read_text().splitlines()
    assert cwd == str(REPO)  # %files sources are relative to the repository root
    fakeroot = [] if os.getuid() == 0 else ["--fakeroot"]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert args[: len(fakeroot) + 5] == [
        "build",
        *fakeroot,
        "--build-arg",
        f"HPCLAB_VERSION={version}",
        "--build-arg",
        args[len(fakeroot) + 4],
    ]
    commit = args[len(fakeroot) + 4].removeprefix("GIT_COMMIT=")
    git = shutil.which("git")
    head = (
        git
        and subprocess.run(
            [git, "-C", str(REPO), "rev-parse", "--verify", "-q", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    )
    assert re.fullmatch(rf"{head}(-dirty)?" if head else "unknown", commit)
    assert args[-3:] == ["--notest", str(image), "containers/hpclab.def"]
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    assert f"image: {image}" in proc.stdout and f"sha256: {sha}" in proc.stdout
    assert (tmp_path / "images" / "hpclab.sif.sha256").read_text() == f"{sha}  hpclab.sif\n"

    # An unprivileged user builds with --fakeroot.
    (stub / "id").write_text("#!/bin/sh\necho 1000\n")
    (stub / "id").chmod(0o755)
    assert subprocess.run([str(BUILD), str(image)], env=env, capture_output=True, text=True, timeout=60).returncode == 0
    assert log.read_text().splitlines()[1:3] == ["build", "--fakeroot"]

    # Apptainer without --build-arg support is refused with the reason.
    proc = subprocess.run(
        [str(BUILD), str(image)], env={**env, "FAKE_VERSION": "1.1.9"}, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and "apptainer 1.1.9 is too old" in proc.stderr

    # The base image is a build argument of the definition too.
    proc = subprocess.run(
        [str(BUILD), str(image), "--notest", "--base", "localhost/debian:bookworm"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    args = log.read_text().splitlines()[1:]
    assert args[args.index("BASE=localhost/debian:bookworm") - 1] == "--build-arg"
    proc = subprocess.run(
        [str(BUILD), str(image), "--archive", "x.tar"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and "--tag and --archive are for OCI builds" in proc.stderr
