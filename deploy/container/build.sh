#!/usr/bin/env bash
# Build the zcrepl image on a machine that reaches no image registry, from this checkout only.
#
#   deploy/container/build.sh [TAG]        (default localhost/zcrepl:latest; run as root)
#
# 1. debootstrap a minimal Debian bookworm root filesystem (cached as a tarball under $ZC_IMAGE_CACHE,
#    default /var/cache/zcrepl-image: outside the checkout, never committed);
# 2. podman import it as the base image localhost/zcrepl-base:bookworm (kept; rebuilt only when missing);
# 3. build zcrepl's wheel from this checkout (pip wheel) and download its dependencies' wheels for the
#    image's Python (PyPI), into a temporary build context with the Containerfile;
# 4. buildah bud --isolation chroot: the RUN steps need no OCI runtime (podman run / crun may be refused
#    setrlimit in sandboxes; see deploy/container/README.md for running the image without one).
#
# Missing tools (podman, buildah, debootstrap) are installed with apt-get. Prints the image id last.
set -euo pipefail

TAG=${1:-localhost/zcrepl:latest}
BASE=localhost/zcrepl-base:bookworm
CACHE=${ZC_IMAGE_CACHE:-/var/cache/zcrepl-image}
MIRROR=${ZC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PYVER=3.11   # bookworm's python3; the dependency wheels must match it
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CHECKOUT=$(cd "$HERE/../.." && pwd)
PYTHON=${PYTHON:-python3}

say() { printf 'build.sh: %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
    say "run as root: debootstrap, podman import and buildah's chroot isolation need it"
    exit 2
fi

missing=()
for tool in podman buildah debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if podman image exists "$BASE"; then
    say "base image $BASE present"
else
    mkdir -p "$CACHE"
    tarball="$CACHE/bookworm-minbase.tar"
    if [ ! -s "$tarball" ]; then
        rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
        trap 'rm -rf "$rootfs"' EXIT
        say "debootstrap --variant=minbase bookworm into $rootfs (a few minutes)"
        debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
            || { say "debootstrap failed: see $CACHE/debootstrap.log"; exit 1; }
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb
        tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf "$rootfs"
        trap - EXIT
    fi
    say "podman import $tarball as $BASE"
    podman import --quiet "$tarball" "$BASE" >/dev/null
fi

ctx=$(mktemp -d "${TMPDIR:-/tmp}/zcrepl-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
cp "$HERE/Containerfile" "$ctx/"
mkdir "$ctx/wheels" "$ctx/config"
cp "$CHECKOUT/deploy/controller.toml" "$CHECKOUT/deploy/agent.toml" "$ctx/config/"
say "building zcrepl's wheel from $CHECKOUT"
# From a copy of the checkout's own files (tracked or new, nothing ignored): a build/ or egg-info left by an
# earlier install must not slip stale modules into the wheel.
src=$(mktemp -d "${TMPDIR:-/tmp}/zcrepl-src.XXXXXX")
trap 'rm -rf "$ctx" "$src"' EXIT
if git -C "$CHECKOUT" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$CHECKOUT" ls-files -z --cached --others --exclude-standard \
        | tar -C "$CHECKOUT" --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -C "$src" -xf -
else
    tar -C "$CHECKOUT" --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' -cf - . \
        | tar -C "$src" -xf -
fi
pip_log="$ctx/pip.log"
"$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation -w "$ctx/wheels" "$src" >"$pip_log" 2>&1 \
    || "$PYTHON" -m pip wheel --quiet --no-deps -w "$ctx/wheels" "$src" >"$pip_log" 2>&1 \
    || { cat "$pip_log" >&2; say "pip wheel of $CHECKOUT failed"; exit 1; }
wheel=$(ls "$ctx"/wheels/zcrepl-*.whl)
arch=$(uname -m)
say "downloading dependency wheels for CPython $PYVER on $arch"
"$PYTHON" -m pip download --quiet --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform "manylinux_2_36_$arch" --platform "manylinux_2_28_$arch" --platform "manylinux_2_17_$arch" \
    --platform "manylinux2014_$arch" --platform "linux_$arch" -d "$ctx/wheels" "$wheel" >"$pip_log" 2>&1 \
    || { cat "$pip_log" >&2; say "downloading the dependencies' wheels failed (is PyPI reachable?)"; exit 1; }
rm -f "$pip_log"

say "buildah bud --isolation chroot -t $TAG"
buildah bud --quiet --isolation chroot --layers=false --build-arg "BASE=$BASE" \
    -f "$ctx/Containerfile" -t "$TAG" "$ctx" >/dev/null
podman image inspect --format '{{.Id}}' "$TAG"
