#!/bin/sh
# The image's self-test (Apptainer's %test; podman: containers/build.sh runs it after the build):
# the lock check, then a 20-step CPU autoencoder run on scikit-learn's digits, in a temporary
# folder. Also on a GPU node: apptainer test --nv IMAGE, or podman run ... IMAGE selftest.
set -eu
home="${HPCLAB_HOME:-/opt/hpclab}"
python -c "import hpclab; print('hpclab', hpclab.__version__, 'from', hpclab.__file__)"
if [ -f "$home/containers/verify_lock.py" ]; then python "$home/containers/verify_lock.py" --constraints "$home/constraints.txt"; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export HPCLAB_DATA="$work/data" HPCLAB_RESULTS="$work/results" HPCLAB_CACHE="$work/cache" MPLCONFIGDIR="$work/matplotlib"
cd "$work"
python "$home/jobs/prepare_data.py" data=digits
python "$home/jobs/launch.py" experiment=ae_latent data=digits preset=smoke train.max_steps=20 train.eval_every=10 train.progress=log
python -c "import json, math, sys; s, e = (json.load(open(f'{sys.argv[1]}/{n}.json')) for n in ('summary', 'environment')); assert s['status'] == 'completed' and math.isfinite(s['metrics']['test/mse']), s; print('smoke run: test/mse', round(s['metrics']['test/mse'], 4), '| torch', e['packages']['torch'], '| GPUs:', e['cuda_devices'] or 'none')" "$HPCLAB_RESULTS/ae_latent-smoke/default"
echo "hpclab image self-test passed"
