# modelyard on one NVIDIA GPU. Build: docker build -t modelyard:0.1.0 .
# Run:   docker run --gpus all -e MODELYARD_API_KEYS=... -v modelyard-cache:/cache \
#          -v "$PWD/models.yaml:/etc/modelyard/models.yaml:ro" -p 8000:8000 modelyard:0.1.0
# (deploy/compose.yaml adds Prometheus and Grafana.)

# ---- build: compiles llama.cpp's CUDA kernels, which needs nvcc (devel image) ----
FROM nvidia/cuda:12.8.1-devel-ubuntu24.04 AS build
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Ubuntu's archive moves package versions under a fixed tag; the CUDA tag above is the pin.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential cmake git \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/modelyard
ENV PATH=/opt/modelyard/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY backends ./backends
COPY tinymodels ./tinymodels
# llama.cpp links libcuda at build time; the stub stands in for the driver the host provides at run time.
ENV CMAKE_ARGS="-DGGML_CUDA=on" \
    LIBRARY_PATH=/usr/local/cuda/lib64/stubs
# The project itself, from this checkout: its dependencies' lower bounds live in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[all,gpu]"

# ---- runtime: CUDA and cuDNN libraries only (faster-whisper's CTranslate2 needs cuDNN) ----
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libgomp1 \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/modelyard modelyard \
 && mkdir -p /cache /etc/modelyard \
 && chown modelyard:modelyard /cache
COPY --from=build /opt/modelyard /opt/modelyard
COPY models.yaml /etc/modelyard/models.yaml
# Inside a container the server must listen on every interface, so it refuses to start unless
# MODELYARD_API_KEYS is set (or --insecure-no-auth is passed on purpose): the same rule as outside.
ENV PATH=/opt/modelyard/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MODELYARD_HOST=0.0.0.0 \
    MODELYARD_PORT=8000 \
    MODELYARD_MODELS=/etc/modelyard/models.yaml \
    MODELYARD_CACHE_DIR=/cache/modelyard \
    MODELYARD_MODEL_DIRS=/etc/modelyard,/models,/cache,/home/modelyard/.cache/modelyard \
    HF_HOME=/cache/huggingface
# Weights (Hugging Face cache, GGUF files, demo models) outlive the container.
VOLUME ["/cache"]
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/modelyard
# The shipped models.yaml serves tiny generated demo models from ~/.cache/modelyard/demo: build them
# into the image (a few MB, CPU only) so the default registry answers out of the box.
RUN GPTQMODEL_CPU_WORKERS=2 HF_HUB_OFFLINE=1 python3 -m tinymodels
EXPOSE 8000
# Ready means the arbiter takes requests; the start period covers a cold start on a slow disk.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5m --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MODELYARD_PORT', '8000') + '/health/ready', timeout=4)"]
ENTRYPOINT ["modelyard"]
CMD ["serve"]
