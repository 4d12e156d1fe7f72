# The image installs every package from pip's configured index (PyPI unless the build machine's pip
# says otherwise): no index address is written here. For CUDA, pass a CUDA base image and the
# package index of the matching torch wheels (docs/scale.md#docker):
#   docker build --build-arg BASE=<a CUDA runtime image> --build-arg TORCH_INDEX=<its torch wheel index> .
ARG BASE=python:3.11-slim
FROM ${BASE}

# No default: unset, torch comes from pip's configured index with the other dependencies.
ARG TORCH_INDEX
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    NO_ALBUMENTATIONS_UPDATE=1 \
    WANDB_MODE=offline \
    LEUK_CACHE_DIR=/cache

RUN if ! command -v python3 >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv && \
        rm -rf /var/lib/apt/lists/*; \
    fi \
    && apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/leuk
COPY pyproject.toml README.md ./
COPY leuk ./leuk
COPY conf ./conf
# A regular (non-editable) install: the configs ship inside the package as leuk/conf.
RUN if [ -n "${TORCH_INDEX}" ]; then \
        python3 -m pip install --index-url "${TORCH_INDEX}" torch torchvision; \
    fi \
    && python3 -m pip install . \
    && rm -rf /opt/leuk/leuk /opt/leuk/conf

WORKDIR /work
VOLUME ["/work", "/cache", "/data"]
ENTRYPOINT ["python3", "-m", "leuk.train"]
