#!/usr/bin/env bash
# CI, the container step (.ci/run calls it after README's Quick start; the local SLURM cluster and
# .venv are up by then). On a machine that reaches Debian's archive and PyPI but no image
# registry, as root:
#   1. podman, runc, debootstrap; a Debian 12 base image made locally (containers/make_base.sh);
#   2. the image built from the one recipe (containers/build.sh);
#   3. the fast tests of the layers under the experiments inside the image;
#   4. the container tests on the host (tests/test_container_run.py): the image's self-test
#      (lock check, CPU smoke run), what a task sees inside
#      the image, one-line errors, the smoke sweep=ae_latent as a SLURM array with every task
#      inside the image and one task requeued mid-run, compared value by value with the same
#      runs outside the image, and an sbatch script's task inside the image;
#   5. the rebuild after a one-line code change (timed; the dependency layer must be reused).
# Prints the time of each step. podman's site settings of these machines: podman-local.conf.
set -euo pipefail
cd "$(dirname "$0")/.."

export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/containers/podman-local.conf}
started=$SECONDS
last=$SECONDS
step() {
  echo "ci-container: $* ($((SECONDS - last)) s; $((SECONDS - started)) s in all)"
  last=$SECONDS
}

missing=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman runc debootstrap >/dev/null
fi
step "podman $(podman --version | awk '{print $3}') ready"

containers/make_base.sh localhost/debian:bookworm
step "base image localhost/debian:bookworm"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
containers/build.sh --base localhost/debian:bookworm --notest | tee "$work/build.log"  # self-test: step 4
image=$(sed -n 's/^image: \([^ ]*\).*/\1/p' "$work/build.log")
[ -n "$image" ] || { echo "ci-container: build.sh printed no image" >&2; exit 1; }
step "built $image"

# The layers under the experiments (config, data, engine, every model, analyses, launchers) in the
# image's environment; the experiments' own smoke runs are the host's (same lock), and one runs
# inside the image in step 4, as a SLURM array compared value by value with the host's.
t=/opt/hpclab/tests
podman run --rm "$image" python -m pytest -q -p no:cacheprovider -m "not slow and not slurm" \
  $t/test_layers.py $t/test_config.py $t/test_data.py $t/test_data_sources.py $t/test_engine.py \
  $t/test_model_zoo.py $t/test_optim.py $t/test_analysis.py $t/test_report.py $t/test_container.py $t/test_multinode.py
step "fast tests of the layers under the experiments inside the image"

HPCLAB_TEST_IMAGE=$image .venv/bin/python -m pytest -q -s -n 0 -m container tests  # -n 0: one file, its -s output
step "container tests on the host (SLURM array inside the image, requeue, inside = outside)"

# The rebuild after a one-line change of the project's code, from a copy of the checkout.
copy=$work/checkout
mkdir "$copy"
git ls-files -z | xargs -0 tar -c | tar -C "$copy" -x
echo "# one-line change" >> "$copy/hpclab/__init__.py"
before=$SECONDS
(cd "$copy" && containers/build.sh --base localhost/debian:bookworm --notest --tag localhost/hpclab:ci-rebuild) > "$work/rebuild.log" 2>&1 \
  || { tail -n 20 "$work/rebuild.log"; exit 1; }
rebuild=$((SECONDS - before))
deps_layer() { podman history --no-trunc --format '{{.ID}} {{.CreatedBy}}' "$1" | grep 'install.sh deps' | cut -d' ' -f1; }
[ "$(deps_layer "$image")" = "$(deps_layer localhost/hpclab:ci-rebuild)" ] \
  || { echo "ci-container: the one-line change rebuilt the dependency layer" >&2; exit 1; }
podman rmi localhost/hpclab:ci-rebuild >/dev/null
step "rebuild after a one-line code change: $rebuild s, dependency layer reused"
