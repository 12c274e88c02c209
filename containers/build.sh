#!/usr/bin/env bash
# Build the hpclab image with the container engine this machine has, from the one recipe
# (containers/install.sh, run by containers/hpclab.def and containers/Containerfile).
#
# usage: containers/build.sh [--engine apptainer|podman|buildah] [--base IMAGE] [--tag NAME]
#                            [--archive FILE.tar] [--notest] [--force] [IMAGE.sif]
#
#   Apptainer (when on PATH, or --engine apptainer): apptainer build IMAGE.sif from
#     containers/hpclab.def (default $HPCLAB_IMAGE, else hpclab.sif at the repository root),
#     with --fakeroot when not root; writes IMAGE.sif.sha256. singularity is used when it is
#     the only one installed.
#   podman or buildah (otherwise): an OCI image from containers/Containerfile, tagged
#     localhost/hpclab:<version>-<commit> and localhost/hpclab:latest (or only --tag NAME);
#     --archive also writes a docker-archive tarball, which a cluster turns into a SIF with
#     apptainer build hpclab.sif docker-archive://FILE.tar (no fakeroot needed there).
#
# --base: the image to start from (default python:3.11.7-slim-bookworm from Docker Hub; where no
# registry is reachable, make a Debian 12 base first: containers/make_base.sh, then
# --base localhost/debian:bookworm). --notest skips the self-test run after the build.
# Needs internet for the base image and the pinned wheels (~3 GB). podman/buildah builds reuse
# downloaded wheels: $HPCLAB_WHEELHOUSE (default ~/.cache/hpclab/wheels) and the pip cache are
# bound into the build, with the host's CA bundle ($PIP_CERT or the system one); none of that
# enters the image. Site settings of podman (cgroup manager, runtime, ulimits) belong in its
# containers.conf; on the hpclab machines: export CONTAINERS_CONF=containers/podman-local.conf.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEF="containers/hpclab.def"
CONTAINERFILE="containers/Containerfile"
DEFAULT_BASE="python:3.11.7-slim-bookworm"
NAME="localhost/hpclab"

die() { echo "error: $*" >&2; exit 1; }

engine="" base="" tag="" archive="" out="" notest=0
opts=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"; exit 0 ;;
        --engine|--base|--tag|--archive)
            [ $# -ge 2 ] || die "$1 needs a value (see containers/build.sh --help)"
            case "$1" in --engine) engine=$2 ;; --base) base=$2 ;; --tag) tag=$2 ;; --archive) archive=$2 ;; esac
            shift ;;
        --notest) notest=1; opts+=("$1") ;;
        -*) opts+=("$1") ;;
        *) [ -z "$out" ] || die "one image path expected, got '$out' and '$1'"; out="$1" ;;
    esac
    shift
done

if [ -z "$engine" ]; then
    for candidate in apptainer singularity podman buildah; do
        if command -v "$candidate" >/dev/null 2>&1; then engine=$candidate; break; fi
    done
    [ -n "$engine" ] || die "no container engine found (apptainer, singularity, podman, buildah): load Apptainer >= 1.2 (e.g. 'module load apptainer') or install podman (Debian/Ubuntu: apt-get install podman runc)"
fi
if [ "$engine" = apptainer ] && ! command -v apptainer >/dev/null 2>&1 && command -v singularity >/dev/null 2>&1; then
    engine=singularity  # SingularityCE, or Apptainer's compatibility name
fi
case "$engine" in
    apptainer|singularity|podman|buildah) ;;
    *) die "--engine $engine: expected apptainer, podman or buildah" ;;
esac
command -v "$engine" >/dev/null 2>&1 || case "$engine" in
    podman|buildah) die "$engine not found on PATH: install it (Debian/Ubuntu: apt-get install $engine runc) or choose another --engine" ;;
    *) die "apptainer not found on PATH: load it (e.g. 'module load apptainer') or install Apptainer >= 1.2 (https://apptainer.org/docs/admin/main/installation.html); without it, build an OCI image with --engine podman and convert it on the cluster" ;;
esac

# Paths given on the command line are relative to where build.sh was called.
absolute() { case "$1" in /*|"") printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac; }
out="$(absolute "$out")"
archive="$(absolute "$archive")"
cd "$ROOT"  # %files and COPY sources are relative to the repository root
project_version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)"
commit="$(git rev-parse --verify -q HEAD 2>/dev/null || true)"
if [ -n "$commit" ]; then
    sources=(pyproject.toml constraints.txt README.md hpclab jobs configs slurm scripts tests benchmarks containers)
    if [ -n "$(git status --porcelain -- "${sources[@]}")" ]; then
        commit="$commit-dirty"
    fi
else
    commit="unknown"  # not a git checkout (or no commit yet)
fi
started=$SECONDS

# --------------------------------------------------------------------------- Apptainer
if [ "$engine" = apptainer ] || [ "$engine" = singularity ]; then
    [ -z "$tag$archive" ] || die "--tag and --archive are for OCI builds (--engine podman); Apptainer writes IMAGE.sif"
    # Apptainer >= 1.2 or SingularityCE >= 4: the definition's %arguments and --build-arg.
    info="$("$engine" --version 2>/dev/null || true)"
    case "$info" in *apptainer*) need=1.2 ;; *) need=4.0 ;; esac  # singularity may be apptainer's alias
    version="$(printf '%s\n' "$info" | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -n 1 || true)"
    [ -n "$version" ] || die "could not read the version of $engine ('$engine --version' printed '$info')"
    if [ "$(printf '%s\n%s\n' "$need" "$version" | sort -V | head -n 1)" != "$need" ]; then
        die "$engine $version is too old: the definition uses --build-arg templating (apptainer >= 1.2, singularity-ce >= 4.0)"
    fi
    out="${out:-$(absolute "${HPCLAB_IMAGE:-$ROOT/hpclab.sif}")}"
    fakeroot=()
    if [ "$(id -u)" != 0 ]; then
        fakeroot=(--fakeroot)  # needs /etc/subuid mappings for apt-get in %post (see docs/containers.md)
    fi
    base_arg=()
    [ -z "$base" ] || base_arg=(--build-arg "BASE=$base")
    mkdir -p "$(dirname "$out")"
    set -x
    "$engine" build ${fakeroot[@]+"${fakeroot[@]}"} \
        --build-arg "HPCLAB_VERSION=$project_version" --build-arg "GIT_COMMIT=$commit" ${base_arg[@]+"${base_arg[@]}"} \
        ${opts[@]+"${opts[@]}"} "$out" "$DEF"
    { set +x; } 2>/dev/null
    [ -f "$out" ] || die "$engine build finished but $out is not a file"
    sha="$(sha256sum "$out" | cut -d' ' -f1)"
    printf '%s  %s\n' "$sha" "$(basename "$out")" > "$out.sha256"
    echo "image: $out"
    echo "sha256: $sha"
    echo "size: $(du -h "$out" | cut -f1), build time: $((SECONDS - started)) s"
    echo "version: $project_version, commit: $commit"
    echo "use it: export HPCLAB_IMAGE=$out   (or cluster.image=$out)"
    exit 0
fi

# --------------------------------------------------------------------------- podman / buildah
[ -z "$out" ] || die "'$out': an OCI build writes no file; name it with --tag, write a tarball with --archive FILE.tar"
[ "${#opts[@]}" -eq 0 ] || [ "${opts[*]}" = --notest ] || die "unknown option(s) ${opts[*]} for an OCI build (see containers/build.sh --help)"
if [ "$engine" = buildah ] && [ "$notest" = 0 ] && ! command -v podman >/dev/null 2>&1; then
    die "the self-test after the build runs the image with podman, which is not installed: install it or pass --notest"
fi
base="${base:-$DEFAULT_BASE}"
short="${commit:0:12}"
[ "$commit" = unknown ] || case "$commit" in *-dirty) short="$short-dirty" ;; esac
tags=(-t "${tag:-$NAME:$project_version-$short}")
[ -n "$tag" ] || tags+=(-t "$NAME:latest")  # the newest build, unless named otherwise
tag="${tag:-$NAME:$project_version-$short}"

# The base image: present, or fetched now, or one line saying how to make one locally.
if ! "$engine" image exists "$base" 2>/dev/null; then
    if [ "$engine" = buildah ]; then fetch=(buildah pull "$base"); else fetch=(podman pull "$base"); fi
    if ! pulled="$("${fetch[@]}" 2>&1)"; then
        die "base image $base cannot be fetched ($(printf '%s\n' "$pulled" | tail -n 1 | cut -c1-160)); where no registry is reachable make a local Debian 12 base: containers/make_base.sh, then containers/build.sh --base localhost/debian:bookworm"
    fi
fi
# podman must be able to start a container here (its cgroup manager, runtime and ulimits).
if [ "$engine" = podman ] && ! probe="$(podman run --rm --entrypoint true "$base" 2>&1)"; then
    die "podman cannot start containers on this machine ($(printf '%s\n' "$probe" | tail -n 1 | cut -c1-200)); set its site options in a containers.conf, e.g. on the hpclab machines: export CONTAINERS_CONF=$ROOT/containers/podman-local.conf"
fi

# Build-time inputs (containers/install.sh): downloaded wheels, the pip cache, the CA bundle.
wheelhouse="${HPCLAB_WHEELHOUSE:-${HOME:-/root}/.cache/hpclab/wheels}"
pip_cache="${PIP_CACHE_DIR:-${HOME:-/root}/.cache/pip}"
mkdir -p "$wheelhouse" "$pip_cache"
volumes=(-v "$wheelhouse:/run/hpclab-build/wheels" -v "$pip_cache:/run/hpclab-build/pip-cache")
ca="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
[ -s "$ca" ] && volumes+=(-v "$ca:/run/hpclab-build/ca-certificates.crt:ro")

if [ "$engine" = buildah ]; then build=(buildah build); else build=(podman build); fi
set -x
"${build[@]}" -f "$CONTAINERFILE" --build-arg "BASE=$base" \
    --build-arg "HPCLAB_VERSION=$project_version" --build-arg "GIT_COMMIT=$commit" \
    --label "org.hpclab.constraints.sha256=$(sha256sum constraints.txt | cut -d' ' -f1)" \
    --label "org.hpclab.base=$base" "${volumes[@]}" "${tags[@]}" .
{ set +x; } 2>/dev/null
build_s=$((SECONDS - started))

if [ "$notest" = 0 ]; then
    podman run --rm "$tag" selftest
fi
if [ -n "$archive" ]; then
    mkdir -p "$(dirname "$archive")"
    rm -f "$archive"
    if [ "$engine" = buildah ]; then
        buildah push "$tag" "docker-archive:$archive:$tag"
    else
        podman save --format docker-archive -o "$archive" "$tag"
    fi
fi

if command -v podman >/dev/null 2>&1; then  # podman and buildah share the image store
    read -r id digest size < <(podman image inspect --format '{{.Id}} {{.Digest}} {{.Size}}' "$tag")
    size="$(awk -v b="$size" 'BEGIN {printf "%.2f GB", b / 1e9}')"
else
    id="$(buildah inspect --type image --format '{{.FromImageID}}' "$tag")" digest="$(buildah inspect --type image --format '{{.FromImageDigest}}' "$tag")" size="unknown"
fi
echo "image: $tag$([ ${#tags[@]} -gt 2 ] && echo " (also $NAME:latest)")"
echo "id: $id"
echo "digest: $digest"
echo "size: $size, build time: $build_s s (with the self-test and archive, if any: $((SECONDS - started)) s)"
echo "version: $project_version, commit: $commit, base: $base"
if [ -n "$archive" ]; then
    echo "archive: $archive ($(du -h "$archive" | cut -f1)); on a cluster: apptainer build hpclab.sif docker-archive://$archive"
else
    echo "for a cluster with Apptainer: containers/build.sh --archive hpclab.tar, then there: apptainer build hpclab.sif docker-archive://hpclab.tar"
fi
echo "use it: export HPCLAB_CONTAINER=podman HPCLAB_IMAGE=$tag   (or cluster.container=podman cluster.image=$tag)"
