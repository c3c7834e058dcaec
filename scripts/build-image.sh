#!/usr/bin/env bash
# Build (and smoke-test) the sqdr image with buildah, for machines without a Docker engine and without
# registry access. With Docker, none of this is needed: `docker build -t sqdr .`.
#
#   scripts/build-image.sh build          # Debian base (once), then the image IMAGE (default localhost/sqdr:latest)
#   scripts/build-image.sh smoke [DIR]    # `sqdr --help` and a one-epoch quickstart fit inside the image;
#                                         # runs/ and results/ land in DIR (default /tmp/sqdr-smoke)
#   scripts/build-image.sh export FILE    # write the image as a docker-archive tar (`docker load -i FILE` elsewhere)
#
# Why it differs from `docker build .`:
# - No container registry is reachable, so there is no python:3.11-slim to start from. The base is made from
#   Debian's packages with mmdebstrap and imported into buildah's storage; the Dockerfile installs Python from
#   apt when its base has none, so the same Dockerfile serves both bases.
# - pip on the host is configured with the host's CA bundle and with local package indexes and wheel folders
#   (torch and torchvision among them). Those are bind-mounted read-only into every RUN step (`--volume`; their
#   contents are never committed to the image) under /run/build-host, and handed to pip through the
#   Dockerfile's PIP_* build arguments, which are empty for everybody else. Mounting them from the build tool
#   rather than with `RUN --mount` in the Dockerfile keeps paths that exist only here out of the Dockerfile.
# - The vfs storage driver (no overlay here) stores every layer as a full copy; `buildah bud` without --layers
#   commits the whole build as one layer on top of the base, which keeps disk use to a few copies of the image.
# - chroot isolation: no user namespaces or runc needed.
#
# Settings (environment): IMAGE, BASE_IMAGE, SUITE, MIRROR (default: the Debian mirror apt uses), WORK (scratch
# folder for the base's tarball), TORCH_INDEX (default empty: torch from the same indexes as everything else,
# which here hold its wheels), PIP_CERT, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS (default: the host's pip config).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/sqdr:latest}
SUITE=${SUITE:-bookworm}              # bookworm's python3 is 3.11, as in python:3.11-slim
BASE_IMAGE=${BASE_IMAGE:-localhost/debian-base:$SUITE}
WORK=${WORK:-/var/tmp/sqdr-image}
TORCH_INDEX=${TORCH_INDEX:-}
STORAGE=(--storage-driver vfs)
export BUILDAH_ISOLATION=chroot

# The Debian mirror apt on this machine already uses (deb822 or one-line sources), else Debian's default.
debian_mirror() {
    local uri
    uri=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
          | grep -oE 'https?://[^ ]*/debian/?( |$)' | head -n1 | tr -d ' ')
    echo "${uri:-http://deb.debian.org/debian}"
}
MIRROR=${MIRROR:-$(debian_mirror)}

pip_conf() { python3 -m pip config get "$1" 2>/dev/null || true; }

build_base() {
    if buildah "${STORAGE[@]}" inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
        echo "base image $BASE_IMAGE already present"
        return
    fi
    mkdir -p "$WORK"
    echo "building $BASE_IMAGE from $MIRROR ($SUITE)"
    # minbase: apt and essentials only; ca-certificates so that apt and pip can use https inside the build.
    mmdebstrap --variant=minbase --include=ca-certificates "$SUITE" "$WORK/rootfs.tar" "$MIRROR"
    local ctr mnt
    ctr=$(buildah "${STORAGE[@]}" from scratch)
    mnt=$(buildah "${STORAGE[@]}" mount "$ctr")
    tar -C "$mnt" -xf "$WORK/rootfs.tar"
    buildah "${STORAGE[@]}" umount "$ctr"
    buildah "${STORAGE[@]}" config --cmd /bin/bash "$ctr"
    buildah "${STORAGE[@]}" commit --rm "$ctr" "$BASE_IMAGE"
    rm -f "$WORK/rootfs.tar"
}

build_image() {
    build_base
    # Host files are mounted under one folder, so the only trace they leave in the image is its empty
    # mount points there (buildah creates them and does not remove them).
    local host=/run/build-host volumes=() args=() ca extra=() links=() url path dir
    # The CA bundle pip is configured with on the host (else the system one).
    ca=${PIP_CERT:-$(pip_conf global.cert)}; ca=${ca:-/etc/ssl/certs/ca-certificates.crt}
    volumes+=(--volume "$ca:$host/ca-bundle.crt:ro")
    args+=(--build-arg "PIP_CERT=$host/ca-bundle.crt")
    # Local package indexes (file:///X/simple links to ../../files, so X is mounted) and wheel folders, from the
    # host's pip configuration, with their paths moved under $host.
    for url in ${PIP_EXTRA_INDEX_URL:-$(pip_conf global.extra-index-url)}; do
        case $url in
            file://*) path=${url#file://}; dir=$path; [ "$(basename "$path")" = simple ] && dir=$(dirname "$path")
                      volumes+=(--volume "$dir:$host$dir:ro"); extra+=("file://$host$path") ;;
            *)        extra+=("$url") ;;
        esac
    done
    for path in ${PIP_FIND_LINKS:-$(pip_conf global.find-links)}; do
        [ -d "$path" ] && { volumes+=(--volume "$path:$host$path:ro"); links+=("$host$path"); }
    done
    args+=(--build-arg "PIP_EXTRA_INDEX_URL=${extra[*]}" --build-arg "PIP_FIND_LINKS=${links[*]}")

    echo "building $IMAGE on $BASE_IMAGE"
    set -x
    buildah "${STORAGE[@]}" bud --isolation chroot \
        --build-arg "BASE=$BASE_IMAGE" \
        --build-arg "TORCH_INDEX=$TORCH_INDEX" \
        "${args[@]}" "${volumes[@]}" \
        -t "$IMAGE" .
    { set +x; } 2>/dev/null
    buildah "${STORAGE[@]}" images "$IMAGE"
}

smoke() {
    local out=${1:-/tmp/sqdr-smoke}
    mkdir -p "$out/runs" "$out/results"
    # A working container is a full copy of the image under vfs: remove it whatever happens.
    SMOKE_CTR=$(buildah "${STORAGE[@]}" from "$IMAGE")
    trap 'buildah "${STORAGE[@]}" rm "$SMOKE_CTR" >/dev/null' EXIT
    buildah "${STORAGE[@]}" run --isolation chroot \
        --volume "$out/runs:/app/runs" --volume "$out/results:/app/results" \
        "$SMOKE_CTR" -- sh -c '
            set -e
            echo "WANDB_MODE=$WANDB_MODE"; python3 --version
            python3 -c "import torch, torchvision; print(\"torch\", torch.__version__, \"torchvision\", torchvision.__version__)"
            ls /usr/share/datasets/fashion-mnist
            sqdr --help
            sqdr fit --config conf/experiments/quickstart.yaml --trainer.max_epochs 1
            make -q .venv/bin/sqdr && echo "make install: nothing to do (.venv/ in the image is up to date)"
        '
    echo "smoke outputs in $out:"; find "$out" -maxdepth 4 | sort | head -n 40
}

case ${1:-build} in
    build)  build_image ;;
    smoke)  smoke "${2:-}" ;;
    export) buildah "${STORAGE[@]}" push "$IMAGE" "docker-archive:${2:?usage: $0 export FILE}:sqdr:latest" ;;
    *)      echo "usage: $0 [build|smoke [DIR]|export FILE]" >&2; exit 2 ;;
esac
