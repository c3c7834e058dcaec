# sqdr in a container: the repository at /app, its .venv/ built inside, results/ on a volume.
#
#   docker build -t sqdr .
#   docker run --rm -v "$PWD/results:/app/results" sqdr                 # make reproduce BUDGET=quick
#   docker run --rm -v "$PWD/results:/app/results" sqdr make train      # any other command
#
# Everything the quick reproduction reads is inside the image (Fashion-MNIST from Debian, scikit-learn's
# digits), so it runs with no network. W&B is offline unless WANDB_MODE is set otherwise at `docker run`.
#
# The base only has to be Debian with apt: python:3.11-slim brings its own Python; a bare Debian base
# (as scripts/build-image.sh uses on machines without a Docker engine) gets Python from apt instead.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

# PyTorch's CPU wheels: the default PyPI build of torch pulls several GB of CUDA libraries that a CPU-only
# reproduction never loads. Empty TORCH_INDEX means "the same index as every other package".
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# The releases pyproject.toml is tested with (its upper bounds), pinned so every image trains on the same ones.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
# pip reads these from the environment. Empty (the default) leaves pip on its own defaults; machines without
# registry access point them at a CA bundle and at local package indexes or wheel folders.
ARG PIP_CERT=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_FIND_LINKS=

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg \
    WANDB_MODE=offline \
    PATH=/app/.venv/bin:$PATH

# make runs the project's targets; dataset-fashion-mnist puts the full data set under
# /usr/share/datasets/fashion-mnist/, where sqdr reads it without a download. Python and its venv module
# come from apt only when the base lacks them, so one Dockerfile serves both kinds of base.
RUN set -eux; \
    pkgs="make dataset-fashion-mnist"; \
    command -v python3 >/dev/null || pkgs="$pkgs python3"; \
    python3 -c 'import ensurepip, venv' 2>/dev/null || pkgs="$pkgs python3-venv"; \
    apt-get update; \
    apt-get install -y --no-install-recommends $pkgs; \
    rm -rf /var/lib/apt/lists/*; \
    test -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

WORKDIR /app

# torch and torchvision first, in a layer of their own: they are most of the image and change least, so a
# rebuild after a source change reuses them. `make install` below finds them satisfying pyproject.toml.
RUN set -eux; \
    python3 -m venv .venv; \
    .venv/bin/pip install --no-cache-dir ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

COPY . .

# The project's own install path (`make install`: .venv/ with `pip install -e '.[test]'`), so `make reproduce`,
# `make train` and `make test` find it up to date and never reinstall at run time.
RUN set -eux; \
    make install; \
    sqdr --help >/dev/null; \
    rm -rf /root/.cache; \
    mkdir -p results runs

# Compile the encoder's numba kernels once, into the image (numba caches them next to the code).
RUN python -c "import torch; from sqdr import SQDRCNN; SQDRCNN()(torch.rand(2, 1, 28, 28)).sum().backward()"

VOLUME ["/app/results"]
CMD ["make", "reproduce", "BUDGET=quick"]
