#!/usr/bin/env bash
# Build a local Python 3.11 base image without any container registry.
#
# Stands in for python:3.11-slim where no registry can be reached: Debian bookworm (minbase,
# from debootstrap) + Debian's python3 (3.11) + a venv at /opt/venv first on PATH, so that
# `python` is 3.11 and `pip install` works just as in the official image.
# The host's extra CA certificates (Debian keeps them in /usr/local/share/ca-certificates/)
# are trusted inside the image and pip is pointed at the bundle, for networks where package
# traffic passes an inspecting proxy.
#
# Usage: docker/base-image.sh [TAG]      (default TAG: $BASE_IMAGE or fedstock-base:bookworm)
# Idempotent: does nothing when TAG exists (set FORCE=1 to rebuild).
# Needs: a running engine and debootstrap (docker/engine.sh), root.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"

TAG="${1:-${BASE_IMAGE:-fedstock-base:bookworm}}"
ROOTFS_TAG="${ROOTFS_TAG:-fedstock-rootfs:bookworm}"
SUITE="bookworm"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
HOST_CA_DIR="/usr/local/share/ca-certificates"

log() { printf '[base-image] %s\n' "$*" >&2; }

if [ "${FORCE:-0}" != 1 ] && "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
    log "$TAG exists; nothing to do"
    exit 0
fi

work="$(mktemp -d)"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

# --- 1. a bare Debian root filesystem, imported as an image ---------------------------------
if [ "${FORCE:-0}" = 1 ] || ! "$DOCKER" image inspect "$ROOTFS_TAG" >/dev/null 2>&1; then
    log "debootstrap --variant=minbase $SUITE from $DEBIAN_MIRROR"
    start=$SECONDS
    debootstrap --variant=minbase "$SUITE" "$work/rootfs" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 ||
        { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
    # Drop what an image does not need: downloaded .debs and apt lists.
    rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
    log "debootstrap took $((SECONDS - start))s; importing as $ROOTFS_TAG"
    tar -C "$work/rootfs" -c . | "$DOCKER" import - "$ROOTFS_TAG" >/dev/null
    rm -rf "$work/rootfs"
else
    log "$ROOTFS_TAG exists; reusing it"
fi

# --- 2. Python on top ------------------------------------------------------------------------
mkdir -p "$work/ctx/ca"
if [ -d "$HOST_CA_DIR" ]; then
    # update-ca-certificates only picks up *.crt files.
    find "$HOST_CA_DIR" -type f -name '*.crt' -exec cp {} "$work/ctx/ca/" \;
fi
log "trusting $(find "$work/ctx/ca" -type f | wc -l) extra CA certificate(s) from $HOST_CA_DIR"

cat >"$work/ctx/Dockerfile" <<EOF
FROM $ROOTFS_TAG
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
# debootstrap writes only the main suite; add its updates and security fixes.
RUN printf '%s\n' \\
      'deb $DEBIAN_MIRROR $SUITE main' \\
      'deb $DEBIAN_MIRROR $SUITE-updates main' \\
      'deb http://deb.debian.org/debian-security $SUITE-security main' \\
      > /etc/apt/sources.list \\
 && apt-get update \\
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \\
 && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates \\
 && python3 -m venv /opt/venv \\
 && /opt/venv/bin/python -m pip --version
# Like python:3.11-slim: \`python\` and \`pip\` on PATH, installs need no extra flags.
ENV PATH=/opt/venv/bin:\$PATH \\
    VIRTUAL_ENV=/opt/venv \\
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \\
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \\
    PIP_DISABLE_PIP_VERSION_CHECK=1
CMD ["python3"]
EOF

log "building $TAG"
start=$SECONDS
"$DOCKER" build -t "$TAG" "$work/ctx" >"$work/build.log" 2>&1 ||
    { tail -n 40 "$work/build.log" >&2; exit 1; }
log "built $TAG in $((SECONDS - start))s: $("$DOCKER" run --rm "$TAG" python --version)," \
    "$("$DOCKER" image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')"
