#!/usr/bin/env bash
# Build the hpclab Apptainer image from containers/hpclab.def, then print its path and sha256.
#
# usage: containers/build.sh [IMAGE.sif] [apptainer build options, e.g. --force --notest]
#
# IMAGE.sif defaults to $HPCLAB_IMAGE, else hpclab.sif at the repository root. Run it on a
# login or build node with internet access (the base image and the pinned wheels are
# downloaded) and ~20 GB free in $APPTAINER_TMPDIR (default /tmp). Unprivileged users build
# with --fakeroot. The image is labelled with the project version and the git commit of the
# tree it was built from ("-dirty" when the copied sources have uncommitted changes).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEF="containers/hpclab.def"

die() { echo "error: $*" >&2; exit 1; }

out=""
opts=()
for arg in "$@"; do
    case "$arg" in
        -h|--help) sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) opts+=("$arg") ;;
        *) [ -z "$out" ] || die "one image path expected, got '$out' and '$arg'"; out="$arg" ;;
    esac
done
out="${out:-${HPCLAB_IMAGE:-$ROOT/hpclab.sif}}"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

# Apptainer >= 1.2 or SingularityCE >= 4: the definition's %arguments and --build-arg.
if command -v apptainer >/dev/null 2>&1; then
    tool=apptainer
elif command -v singularity >/dev/null 2>&1; then
    tool=singularity
else
    die "apptainer not found on PATH: load it (e.g. 'module load apptainer') or install Apptainer >= 1.2 (https://apptainer.org/docs/admin/main/installation.html); it cannot be installed on the hpclab development machines, so build on a cluster login node"
fi
info="$("$tool" --version 2>/dev/null || true)"
case "$info" in *apptainer*) need=1.2 ;; *) need=4.0 ;; esac  # singularity may be apptainer's alias
version="$(printf '%s\n' "$info" | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -n 1 || true)"
[ -n "$version" ] || die "could not read the version of $tool ('$tool --version' printed '$info')"
if [ "$(printf '%s\n%s\n' "$need" "$version" | sort -V | head -n 1)" != "$need" ]; then
    die "$tool $version is too old: the definition uses --build-arg templating (apptainer >= 1.2, singularity-ce >= 4.0)"
fi

cd "$ROOT"  # %files sources are relative to the working directory
project_version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)"
commit="$(git rev-parse --verify -q HEAD 2>/dev/null || true)"
if [ -n "$commit" ]; then
    sources=(pyproject.toml constraints.txt hpclab jobs configs slurm scripts tests containers)
    if [ -n "$(git status --porcelain -- "${sources[@]}")" ]; then
        commit="$commit-dirty"
    fi
else
    commit="unknown"  # not a git checkout (or no commit yet)
fi

fakeroot=()
if [ "$(id -u)" != 0 ]; then
    fakeroot=(--fakeroot)
fi

mkdir -p "$(dirname "$out")"
set -x
"$tool" build ${fakeroot[@]+"${fakeroot[@]}"} \
    --build-arg "HPCLAB_VERSION=$project_version" --build-arg "GIT_COMMIT=$commit" \
    ${opts[@]+"${opts[@]}"} "$out" "$DEF"
{ set +x; } 2>/dev/null

[ -f "$out" ] || die "$tool build finished but $out is not a file"
sha="$(sha256sum "$out" | cut -d' ' -f1)"
printf '%s  %s\n' "$sha" "$(basename "$out")" > "$out.sha256"
echo "image: $out"
echo "sha256: $sha"
echo "version: $project_version, commit: $commit"
echo "use it: export HPCLAB_IMAGE=$out   (or cluster.image=$out)"
