# shellcheck shell=bash
# Sourced by the docker/ and tests/compose/ scripts: picks the Docker client to use.
#
# Debian's docker.io installs its client as /usr/bin/docker, matching its engine; another
# (possibly older or newer) client may stand first on PATH. Prefer Debian's unless the
# caller says otherwise with DOCKER=/path/to/docker. Sourcing again after docker.io has been
# installed switches to Debian's client, unless the caller chose one.
if [ -z "${DOCKER:-}" ] || [ "${FEDSTOCK_DOCKER_PICKED:-0}" = 1 ]; then
    FEDSTOCK_DOCKER_PICKED=1
    if [ -x /usr/bin/docker ]; then
        DOCKER=/usr/bin/docker
    else
        DOCKER="$(command -v docker || echo docker)"
    fi
fi
export DOCKER FEDSTOCK_DOCKER_PICKED
