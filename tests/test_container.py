"""The Apptainer image: its definition, build script, lock, and how SLURM tasks enter it.

Apptainer cannot be installed on the development machines, so what can be checked without it is
checked for real: the definition parses (spython's Singularity recipe parser), its sections'
shell code runs here against the checkout (%environment, %runscript and the %test smoke
experiment), the packages it installs are exactly constraints.txt, build.sh fails clearly
without apptainer and calls it correctly with one, and the srun lines of a SLURM dry run enter
the image with the configured paths bound.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from formats.dist_info import write_dist_info
from omegaconf import OmegaConf
from packaging.utils import canonicalize_name

from hpclab.config import ConfigError, compose
from hpclab.launch import container

DEF = REPO / "containers" / "hpclab.def"
BUILD = REPO / "containers" / "build.sh"
RELAY = REPO / "containers" / "scontrol-relay"
HOME = "/opt/hpclab"  # where %files puts the project inside the image


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


@pytest.fixture(scope="module")
def recipe():
    from spython.main.parse.parsers import SingularityParser

    return SingularityParser(str(DEF)).recipe["spython-base"]


@pytest.fixture(scope="module")
def sections() -> dict[str, str]:
    return raw_sections(DEF.read_text())


def pins_of(path: Path) -> dict[str, str]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return {canonicalize_name(l.split("==")[0]): l.split("==")[1] for l in lines if l}


def resolved_closure(requirements: list[str]) -> dict[str, str]:
    """What pip installs for ``requirements`` here: scripts/freeze_constraints.py's closure."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("freeze_constraints", REPO / "scripts" / "freeze_constraints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.closure(requirements)


# --------------------------------------------------------------------------- the definition

def test_definition_parses_with_every_section(recipe, sections):
    assert sections[""].splitlines()[0] == "Bootstrap: docker"
    assert recipe.fromHeader == "python:3.11.7-slim-bookworm"
    assert {"arguments", "files", "post", "environment", "runscript", "test", "labels", "help"} <= set(sections)
    assert recipe.cmd and recipe.test  # spython turned %runscript and %test into scripts


def test_files_copy_the_project_into_the_image(recipe):
    pairs = dict(line.split() for line in recipe.files)
    for source in pairs:
        assert (REPO / source).exists(), f"%files source {source} is missing (build.sh runs from the repo root)"
    for part in ("pyproject.toml", "constraints.txt", "hpclab", "jobs", "configs", "slurm"):
        assert pairs[part] == f"{HOME}/{part}"
    assert pairs["containers/verify_lock.py"] == f"{HOME}/containers/verify_lock.py"
    assert "containers/scontrol-relay /usr/local/bin/scontrol" in recipe.files
    assert f"cd {HOME}" in recipe.install


def test_labels_and_build_arguments_agree(recipe, sections):
    labels = dict(line.split(" ", 1) for line in recipe.labels)
    assert labels["org.opencontainers.image.version"] == "{{ HPCLAB_VERSION }}"
    assert labels["org.opencontainers.image.revision"] == "{{ GIT_COMMIT }}"
    declared = {line.split("=", 1)[0] for line in sections["arguments"].split()}
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", DEF.read_text()))
    passed = set(re.findall(r'--build-arg "(\w+)=', BUILD.read_text()))
    # Apptainer fails on an undeclared template variable and on an unused --build-arg.
    assert used == declared == passed == {"HPCLAB_VERSION", "GIT_COMMIT"}


def test_environment_section_points_caches_at_the_shared_directory(sections, tmp_path):
    script = tmp_path / "environment.sh"
    script.write_text(sections["environment"])

    def evaluate(**host: str) -> dict[str, str]:
        out = subprocess.run(["sh", "-c", '. "$0"; env', str(script)], env={"PATH": os.environ["PATH"], **host},
                             capture_output=True, text=True, check=True).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    env = evaluate(TORCH_HOME="/home/me/.cache/torch")
    assert env["HDF5_USE_FILE_LOCKING"] == "FALSE"
    assert (env["HPCLAB_DATA"], env["HPCLAB_RESULTS"], env["HPCLAB_CACHE"]) == ("/shared/data", "/shared/results", "/shared/cache")
    assert env["TORCH_HOME"] == "/shared/cache" and env["HF_HOME"] == "/shared/cache/huggingface"
    assert env["HPCLAB_HOME"] == HOME and env["PYTHONNOUSERSITE"] == "1"

    # The launcher's --env values and the image's derivation name the same cache folders.
    paths = {"data": "/scratch/me/data", "results": "/scratch/me/results", "cache": "/scratch/me/cache"}
    passed = container.container_env(paths)
    env = evaluate(HPCLAB_CACHE=passed["HPCLAB_CACHE"], HPCLAB_DATA=passed["HPCLAB_DATA"])
    assert env["TORCH_HOME"] == passed["TORCH_HOME"] and env["HF_HOME"] == passed["HF_HOME"]
    assert env["HPCLAB_DATA"] == "/scratch/me/data"


def test_runscript_forwards_to_the_job_scripts(sections, tmp_path):
    script = tmp_path / "runscript.sh"
    script.write_text(sections["runscript"])
    env = {**os.environ, "HPCLAB_HOME": str(REPO)}
    for args, usage in ([["--help"], "jobs/launch.py"], [["launch", "--help"], "jobs/launch.py"],
                        [["prepare_data", "--help"], "jobs/prepare_data.py"]):
        proc = subprocess.run(["sh", str(script), *args], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert f"usage: python {usage}" in proc.stdout


@pytest.mark.slow
def test_self_test_section_runs_the_cpu_smoke_experiment(sections, tmp_path):
    """%test exactly as the image runs it, with the checkout standing in for /opt/hpclab."""
    script = tmp_path / "test.sh"
    script.write_text(sections["test"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCLAB_")}
    proc = subprocess.run(["sh", str(script)], env={**env, "HPCLAB_HOME": str(REPO), "TMPDIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "hpclab image self-test passed" in proc.stdout and "smoke run: test/mse" in proc.stdout
    assert "data=digits" in sections["test"] and "train.max_steps=20" in sections["test"]
    assert not list(tmp_path.glob("tmp.*"))  # its work directory (mktemp -d) was removed


# --------------------------------------------------------------------------- the lock

def test_post_installs_the_project_with_the_lock_only(recipe):
    pip_lines = [line for line in recipe.install if re.search(r"\bpip install\b", line)]
    assert pip_lines
    for line in pip_lines:
        args = shlex.split(line)
        assert args[args.index("-c") + 1] == "constraints.txt", line  # /opt/hpclab/constraints.txt
        assert not any("==" in a or a in ("-U", "--upgrade", "-r") for a in args), f"pin or upgrade outside the lock: {line}"
    assert any('-e ".[dev]"' in line for line in pip_lines)
    assert "python containers/verify_lock.py --constraints constraints.txt" in recipe.install


def test_lock_pins_exactly_what_the_project_resolves_to():
    """constraints.txt = pip's resolution of ``-e .[dev]`` (what the image and CI install)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    closure = resolved_closure(project["dependencies"] + project["optional-dependencies"]["dev"])
    closure.pop("hpclab", None)
    lock = pins_of(REPO / "constraints.txt")
    assert not set(closure) - set(lock), f"resolved but not pinned (unpinned in the image): {sorted(set(closure) - set(lock))}"
    assert not set(lock) - set(closure), f"pinned but not needed: {sorted(set(lock) - set(closure))}"
    assert closure == lock


def test_verify_lock_rejects_any_difference(tmp_path):
    lock = tmp_path / "constraints.txt"
    lock.write_text("# lock\nnumpy==2.4.6\nPyYAML==6.0.3\n")
    site = tmp_path / "site"
    for name, version in (("numpy", "2.4.6"), ("PyYAML", "6.0.3"), ("pip", "23.2.1")):
        write_dist_info(site, name, version)

    def verify() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(REPO / "containers" / "verify_lock.py"), "--constraints", str(lock),
                               "--path", str(site)], capture_output=True, text=True)

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
    cfg = compose(["cluster=slurm", f"paths.data={tmp_path}/data", f"paths.results={tmp_path}/results",
                   "cluster.binds=[/site/slurm:/etc/slurm:ro]"])
    assert set(cfg.paths) == {"data", "results", "cache"} and cfg.paths.cache == f"{tmp_path}/data/cache"
    # The default cache (data/cache) and submitit folder (results/<sweep>/.submitit) are covered
    # by their parents' binds; a cache or folder elsewhere gets its own; site binds come verbatim.
    folder = tmp_path / "results" / "ae_latent" / ".submitit"
    assert container.bind_args(cfg.cluster, cfg.paths, folder) == [
        "--bind", f"{tmp_path}/data", "--bind", f"{tmp_path}/results", "--bind", "/site/slurm:/etc/slurm:ro"]
    paths = {**cfg.paths, "cache": f"{tmp_path}/weights"}
    assert container.project_dirs(paths, tmp_path / "submitit") == [
        f"{tmp_path}/data", f"{tmp_path}/results", f"{tmp_path}/weights", f"{tmp_path}/submitit"]
    with pytest.raises(ConfigError, match="paths.data"):
        container.project_dirs({**cfg.paths, "data": "/a,b"})


def test_exec_prefix_and_python(monkeypatch, tmp_path):
    monkeypatch.delenv("HPCLAB_IMAGE", raising=False)
    paths = {"data": "/d", "results": "/r", "cache": "/d/cache"}
    cluster = OmegaConf.create({"image": None, "gpus_per_node": 4, "binds": []})
    assert container.exec_prefix(cluster, paths) == [] and container.container_python(cluster, paths) == sys.executable
    monkeypatch.setenv("HPCLAB_IMAGE", "/images/my image.sif")
    python = container.container_python(cluster, paths)
    assert python == ("apptainer exec --nv --bind /d --bind /r --env HPCLAB_DATA=/d --env HPCLAB_RESULTS=/r "
                      "--env HPCLAB_CACHE=/d/cache --env TORCH_HOME=/d/cache --env HF_HOME=/d/cache/huggingface "
                      "'/images/my image.sif' python")
    cluster.gpus_per_node = 0
    cluster.image = "/x/hpclab.sif"  # the config wins over $HPCLAB_IMAGE
    assert shlex.split(container.container_python(cluster, paths))[:3] == ["apptainer", "exec", "--bind"]
    assert shlex.split(container.container_python(cluster, paths))[-2:] == ["/x/hpclab.sif", "python"]
    with pytest.raises(ConfigError, match="cluster.image.*containers/build.sh"):
        container.check_image(cluster)
    (tmp_path / "hpclab.sif").write_bytes(b"SIF")
    cluster.image = str(tmp_path / "hpclab.sif")
    container.check_image(cluster)


def srun_tokens(output: str) -> list[str]:
    lines = [line for line in output.splitlines() if line.startswith("srun ")]
    assert len(lines) == 1, output
    return shlex.split(lines[0])


def assert_enters_image(tokens: list[str], image: str, workdir: Path, gpus: bool) -> None:
    start = tokens.index("apptainer")
    assert tokens[start + 1] == "exec" and ("--nv" in tokens) == gpus
    python = tokens.index("python", start)
    assert tokens[python - 1] == image
    assert tokens[python:python + 4] == ["python", "-u", "-m", "submitit.core._submit"]
    binds = [Path(tokens[i + 1]) for i in range(start, python) if tokens[i] == "--bind"]
    needed = [workdir / "data", workdir / "results", workdir / "data" / "cache", workdir / "results" / "ae_latent" / ".submitit"]
    for path in needed:  # what the tasks open: each inside a bound directory
        assert any(path.is_relative_to(bind) for bind in binds), (path, binds)


def test_slurm_dry_run_renders_apptainer_exec(workdir, monkeypatch):
    monkeypatch.delenv("HPCLAB_IMAGE", raising=False)
    out = run_cli("launch.py", "sweep=ae_latent", "cluster=slurm", "cluster.image=/x/hpclab.sif", "dry_run=true",
                  cwd=workdir).stdout
    assert "apptainer exec --nv --bind" in out
    assert_enters_image(srun_tokens(out), "/x/hpclab.sif", workdir, gpus=True)
    assert not (workdir / "results").exists()  # a dry run writes nothing

    # The same through the package API (what the CLI calls), cheaper than more subprocesses:
    # $HPCLAB_IMAGE works like cluster.image; no GPUs asked for, no --nv; no image, plain python.
    from hpclab.launch import executors
    from hpclab.launch.sweep import plan

    monkeypatch.setenv("HPCLAB_IMAGE", "/images/hpclab.sif")
    sbatch = executors.render_sbatch(plan(["sweep=ae_latent", "cluster=slurm", "cluster.gpus_per_node=0"]))
    assert_enters_image(srun_tokens(sbatch), "/images/hpclab.sif", workdir, gpus=False)
    monkeypatch.delenv("HPCLAB_IMAGE")
    tokens = srun_tokens(executors.render_sbatch(plan(["sweep=ae_latent", "cluster=slurm"])))
    assert "apptainer" not in tokens and tokens[tokens.index(sys.executable):][:4] == [sys.executable, "-u", "-m", "submitit.core._submit"]


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
    paths = {"data": str(tmp_path / "data"), "results": str(tmp_path / "results"), "cache": str(tmp_path / "data/cache")}
    folder = tmp_path / "results" / ".submitit"
    setup = "\n".join(container.slurm_setup(cluster, paths, folder))
    env = {"PATH": f"{host_bin}:{os.environ['PATH']}", "SLURM_JOB_ID": "78"}

    # The batch script: setup lines, then the step, in which submitit (inside the image) asks
    # for the requeue after its checkpoint; then the batch script ends.
    step = f"PATH={image_bin} scontrol requeue 77_3"
    proc = subprocess.run(["bash", "-c", f"{setup}\n{step}\necho step done\n"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert log.read_text() == "requeue 77_3\n"  # once, by the batch script after the step
    assert "hpclab: tasks run in the Apptainer image: apptainer exec --nv" in proc.stdout
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
    proc = subprocess.run(["scontrol", "requeue", "5"], env={"PATH": f"{image_bin}:{host_bin}"}, capture_output=True, text=True)
    assert proc.returncode == 0 and log.read_text() == "requeue 5\n"


# --------------------------------------------------------------------------- build.sh

def path_without(tmp_path: Path, *names: str) -> str:
    """A PATH with every command of this machine except ``names``."""
    bin_dir = tmp_path / "bin-without"
    bin_dir.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not Path(directory).is_dir():
            continue
        for tool in Path(directory).iterdir():
            target = bin_dir / tool.name
            if tool.name not in names and not target.exists() and os.access(tool, os.X_OK):
                target.symlink_to(tool)
    return str(bin_dir)


def test_build_script_fails_clearly_without_apptainer(tmp_path):
    proc = subprocess.run([str(BUILD), str(tmp_path / "hpclab.sif")], env={"PATH": path_without(tmp_path, "apptainer", "singularity")},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error: apptainer not found on PATH")
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
    assert args[: len(fakeroot) + 5] == ["build", *fakeroot, "--build-arg", f"HPCLAB_VERSION={version}", "--build-arg", args[len(fakeroot) + 4]]
    commit = args[len(fakeroot) + 4].removeprefix("GIT_COMMIT=")
    git = shutil.which("git")
    head = git and subprocess.run([git, "-C", str(REPO), "rev-parse", "--verify", "-q", "HEAD"], capture_output=True, text=True).stdout.strip()
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
    proc = subprocess.run([str(BUILD), str(image)], env={**env, "FAKE_VERSION": "1.1.9"}, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "apptainer 1.1.9 is too old" in proc.stderr
