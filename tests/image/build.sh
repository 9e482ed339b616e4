#!/usr/bin/env bash
# `make image`: the container image built with podman, tagged meshpy:<version> (what `meshpy inject`
# writes into pods). Idempotent; says what it changes on the host.
#
#   1. Host: podman, runc and catatonit (the pods' pause image) from Debian, installed when missing and
#      run as root; debootstrap too when the base has to be made.
#   2. Base: unless MESHPY_PYTHON_IMAGE names one (e.g. docker.io/library/python:3.11.11-slim-bookworm
#      where a registry is reachable), a Debian bookworm root with python3 made by debootstrap and
#      imported as meshpy-base:bookworm; skipped when that image exists (`podman rmi` it to remake it).
#   3. Build: `podman build --isolation chroot --network host`, the host's CA bundle mounted so that pip
#      in the build trusts what the host trusts, docker format (OCI images drop HEALTHCHECK).
#   4. Check: the image runs (`meshpy --version`). Where the OCI runtime may not set rlimits (as on
#      VMs that refuse prlimit), /etc/containers/containers.conf gets `default_ulimits = []`.
#
# Environment: MESHPY_IMAGE (tag), MESHPY_PYTHON_IMAGE (base instead of debootstrap),
# MESHPY_PODMAN_RUNTIME (default runc), MESHPY_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

cd "$(dirname "$0")/../.."

say() { echo "image: $*"; }
die() { echo "image: $*" >&2; exit 1; }

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)"
[ -n "$version" ] || die "no version in pyproject.toml"
image="${MESHPY_IMAGE:-meshpy:$version}"
base="meshpy-base:bookworm"
python_image="${MESHPY_PYTHON_IMAGE:-}"
runtime="${MESHPY_PODMAN_RUNTIME:-runc}"
mirror="${MESHPY_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
conf=/etc/containers/containers.conf
if [ "${1:-}" = "--print-tag" ]; then  # what `make image` tags (tests/unit/test_dockerfile.py checks it)
    echo "$image"
    exit 0
fi

# --- 1. host packages -----------------------------------------------------------------------------
need_base=0
if [ -z "$python_image" ] && ! { command -v podman >/dev/null && podman image exists "$base"; }; then
    need_base=1
fi
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v "$runtime" >/dev/null || missing+=("$runtime")
# `podman pod create` builds its pause image from catatonit; the CNI bridge's port mapping needs iptables.
command -v catatonit >/dev/null || test -x /usr/libexec/podman/catatonit || missing+=(catatonit)
command -v iptables >/dev/null || missing+=(iptables)
if ((need_base)); then
    command -v debootstrap >/dev/null || missing+=(debootstrap)
fi
if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    else
        die "missing: ${missing[*]} (as root: apt-get install ${missing[*]})"
    fi
fi
podman=(podman --runtime "$runtime")

# --- 2. base ---------------------------------------------------------------------------------------
if [ -n "$python_image" ]; then
    from="$python_image"
    say "base: $from (MESHPY_PYTHON_IMAGE)"
elif ((need_base)); then
    [ "$(id -u)" = 0 ] || die "debootstrap needs root to make $base"
    started=$SECONDS
    root="$(mktemp -d /var/tmp/meshpy-base.XXXXXX)"
    trap 'rm -rf "$root"' EXIT
    say "base: debootstrap bookworm from $mirror into $root (about a minute)"
    # python-is-python3: the Dockerfile's HEALTHCHECK runs `python`, as in the python images.
    debootstrap --variant=minbase \
        --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates \
        bookworm "$root" "$mirror" >"$root.log" 2>&1 \
        || { tail -n 20 "$root.log" >&2; die "debootstrap failed (log: $root.log)"; }
    rm -f "$root.log"
    # pip installs into the system Python, as in the python images (a container is its environment).
    rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
    # Keep later apt-get and dpkg runs small, as Debian's own container images do.
    cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    cat >"$root/etc/dpkg/dpkg.cfg.d/docker-excludes" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
    find "$root/usr/share/doc" -mindepth 2 ! -name copyright -type f -delete
    rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
        "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | podman import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$base" >/dev/null
    rm -rf "$root"
    trap - EXIT
    say "base: $base made in $((SECONDS - started))s"
    from="$base"
else
    from="$base"
    say "base: $base (exists; \`podman rmi $base\` makes it again)"
fi

# --- 3. build --------------------------------------------------------------------------------------
started=$SECONDS
build=(--isolation chroot --network host --format docker --build-arg "PYTHON_IMAGE=$from")
if [ -r /etc/ssl/certs/ca-certificates.crt ]; then
    build+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
fi
log="${TMPDIR:-/tmp}/meshpy-image-build.log"
say "podman build ${build[*]} -t $image . (output: $log)"
if ! "${podman[@]}" build "${build[@]}" -t "$image" . >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "podman build failed (whole output: $log)"
fi
say "built $image in $((SECONDS - started))s"

# --- 4. it runs ------------------------------------------------------------------------------------
# --no-healthcheck: podman schedules healthchecks with systemd timers, and says so where there is none.
probe() { "${podman[@]}" run --rm --network none --no-healthcheck "$image" --version 2>&1; }
if ! out="$(probe)"; then
    case "$out" in
    *rlimit*)
        [ "$(id -u)" = 0 ] || die "podman cannot set rlimits here; as root add 'default_ulimits = []' under [containers] in $conf"
        if [ -f "$conf" ] && grep -Eq '^[[:space:]]*default_ulimits[[:space:]]*=' "$conf"; then
            die "$conf sets default_ulimits, and the runtime cannot set them here: $out"
        fi
        mkdir -p "$(dirname "$conf")"
        if [ -f "$conf" ] && grep -Eq '^[[:space:]]*\[containers\]' "$conf"; then
            sed -i '/^[[:space:]]*\[containers\]/a default_ulimits = []' "$conf"
        else
            printf '\n[containers]\n# tests/image/build.sh: the OCI runtime may not set rlimits on this machine.\ndefault_ulimits = []\n' >>"$conf"
        fi
        say "changed $conf: default_ulimits = [] under [containers] (the runtime may not set rlimits here: ${out##*: })"
        out="$(probe)" || die "the image does not run: $out"
        ;;
    *) die "the image does not run: $out" ;;
    esac
fi
size="$(podman image inspect --format '{{.Size}}' "$image")"
say "$image runs ($out), $((size / 1000000)) MB"
