# ldm-runtime with the TensorRT backend, x86-64: runs TensorRT bundles, builds their engines
# (ldm-run prepare) for the GPU it runs on. The runtime only: no torch, no ldm-export.
#
#   docker build -t ldm-runtime:trt .
#   docker run --gpus all -v "$PWD/bundle:/bundle" ldm-runtime:trt prepare /bundle
#   docker run --gpus all -v "$PWD/bundle:/bundle" ldm-runtime:trt generate /bundle --backend tensorrt -p "..."
#
# The default base is NVIDIA's TensorRT 24.08 container: TensorRT 10.3 and CUDA 12.6, the versions
# JetPack 6.1/6.2 ships, so an engine-free bundle checked here behaves as on a Jetson. Any newer
# TensorRT image works too (TRT_IMAGE); engines are built for the TensorRT the image has.
ARG TRT_IMAGE=nvcr.io/nvidia/tensorrt:24.08-py3
FROM ${TRT_IMAGE}

WORKDIR /opt/ldm
COPY runtimes/ ./runtimes/

# TensorRT's Python package comes with the image (its system Python, Ubuntu 22.04), so the runtime
# goes into that Python beside it; cuda-python's major version follows the image's CUDA (12.x).
RUN python3 -m pip install --no-cache-dir "./runtimes[tensorrt]" "cuda-python>=12.6,<13" \
    && python3 -c "import tensorrt, ldm_runtime.runners.tensorrt; print('TensorRT', tensorrt.__version__)" \
    && if python3 -c "import torch" 2>/dev/null; then echo "torch must not be in this image" >&2; exit 1; fi

ENTRYPOINT ["ldm-run"]
CMD ["--help"]
