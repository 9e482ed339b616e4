# meshpy container image: the proxy as a sidecar, with config/sidecar.yaml as its default config.
#
#   docker build -t meshpy:0.1.0 .
#   docker run --rm -p 15006:15006 meshpy:0.1.0
#   docker run --rm -v "$PWD/my.yaml:/etc/meshpy/meshpy.yaml:ro" meshpy:0.1.0     # your own config
#   docker run --rm meshpy:0.1.0 validate /etc/meshpy/meshpy.yaml
#
# `make image` builds it with podman (tests/image/build.sh), on a Debian bookworm base made with
# debootstrap where no registry is reachable (PYTHON_IMAGE=meshpy-base:bookworm: Debian's python3 with
# pip, python-is-python3 and ca-certificates); `make test-image` runs it (tests/image/).
#
# Build stage: turn the source into a wheel. Runtime stage: that wheel and its runtime
# dependencies only, no compiler, no source tree, no test or dev tools.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# The compiled nghttp2 binding (meshpy.codec.nghttp2.native_build) needs a C compiler and the headers
# of Python and of libnghttp2: in this stage only. Not pinned: they follow the base image's Debian.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libnghttp2-dev python3-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY meshpy ./meshpy
COPY control ./control
# The binding is built into the package (meshpy/codec/nghttp2/_native*.so, package data of the wheel).
RUN pip install "cffi>=1.15" \
    && python -m meshpy.codec.nghttp2.native_build \
    && pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# iptables: the same image runs the pod's init step (`meshpy iptables`, as root), which feeds the nat
# rules to iptables-restore. Pinned to the Debian release of the base image. libnghttp2-14: the C
# HTTP/2 codec meshpy loads through cffi (without it meshpy falls back to the slower pure-Python h2);
# not pinned, so that the image takes Debian's security fixes for it (1.52.0-1+deb12uN).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables=1.8.9-2 libnghttp2-14 \
    && rm -rf /var/lib/apt/lists/*

COPY --from=build /wheels /tmp/wheels
# The wheel's own requirements (uvloop, httptools, ...) come as binary wheels from the index.
RUN pip install /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && groupadd --system --gid 10001 meshpy \
    && useradd --system --uid 10001 --gid meshpy --no-create-home --shell /usr/sbin/nologin meshpy

COPY config/sidecar.yaml /etc/meshpy/meshpy.yaml

USER 10001:10001

# 15006: inbound (the pod's traffic). The outbound listener (15001) and the admin interface (15000)
# listen on 127.0.0.1 only, for the application and the probes inside the same network namespace.
EXPOSE 15006

# /ready is 200 while serving and 503 while starting or draining. Slim images have no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:15000/ready', timeout=2)"]

# SIGTERM (docker stop) drains: /ready turns 503, listeners close after drain_time, requests in flight
# get grace_time. Give `docker stop -t` at least their sum (2s + 10s in the default config).
STOPSIGNAL SIGTERM
ENTRYPOINT ["meshpy"]
CMD ["run", "-c", "/etc/meshpy/meshpy.yaml"]
