# ldm-runtime with the TensorRT backend for Jetson (L4T, JetPack 6.1/6.2: TensorRT 10.3, CUDA 12.6).
# The runtime only: no torch. Build it on the Jetson (or an arm64 builder):
#
#   docker build -f docker/jetson.Dockerfile -t ldm-runtime:jetson .
#   docker run --runtime nvidia -v "$PWD/bundle:/bundle" ldm-runtime:jetson prepare /bundle --workspace 1G
#
# TensorRT's Python bindings are JetPack's (python3-libnvinfer in the l4t-jetpack image): PyPI has no
# TensorRT wheels for Jetson, so the venv is made with --system-site-packages to see them.
ARG L4T_IMAGE=nvcr.io/nvidia/l4t-jetpack:r36.4.0
FROM ${L4T_IMAGE}

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv python3-libnvinfer \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/ldm
COPY runtimes/ ./runtimes/

RUN python3 -m venv --system-site-packages /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "./runtimes[tensorrt]" "cuda-python>=12.6,<13" \
    && /opt/venv/bin/python -c "import tensorrt, ldm_runtime.runners.tensorrt; print('TensorRT', tensorrt.__version__)" \
    && if /opt/venv/bin/python -c "import torch" 2>/dev/null; then echo "torch must not be in this image" >&2; exit 1; fi

ENV PATH=/opt/venv/bin:$PATH
ENTRYPOINT ["ldm-run"]
CMD ["--help"]
