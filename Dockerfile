# CPU image by default; for CUDA: docker build --build-arg BASE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
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
RUN python3 -m pip install --index-url ${TORCH_INDEX} --extra-index-url https://pypi.org/simple torch torchvision \
    && python3 -m pip install . \
    && rm -rf /opt/leuk/leuk /opt/leuk/conf

WORKDIR /work
VOLUME ["/work", "/cache", "/data"]
ENTRYPOINT ["python3", "-m", "leuk.train"]
