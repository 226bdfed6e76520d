# shellcheck shell=bash
# Sourced by the docker/ and tests/compose/ scripts: picks the Docker client to use.
#
# Debian's docker.io installs its client as /usr/bin/docker, matching its engine; another
# (possibly older or newer) client may stand first on PATH. Prefer Debian's unless the
# caller says otherwise with DOCKER=/path/to/docker.
if [ -z "${DOCKER:-}" ]; then
    if [ -x /usr/bin/docker ]; then
        DOCKER=/usr/bin/docker
    else
        DOCKER="$(command -v docker || echo docker)"
    fi
fi
export DOCKER
