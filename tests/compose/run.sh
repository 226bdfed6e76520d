#!/usr/bin/env bash
# End-to-end test of the containers on a real Docker engine, from a fresh machine:
#   1. engine      docker/engine.sh (installs and starts the engine and Compose v2 if needed),
#                  then `docker compose config` of the files generated for twelve members, the
#                  compose file alone and with its data and HE overrides (tests/compose/
#                  check_config.py: each member's container mounts only what is its own)
#   2. base image  docker/base-image.sh, unless BASE_IMAGE names one to use instead
#   3. image       `docker compose build` of the project image on that base
#   4. up          the nine-province federation on the embedded synthetic market, over mutual
#                  TLS; passes when the certs job, the server and all nine clients exit 0 and
#                  the results file lists nine clients and a finite MSE for every round
#   5. solo        one province alone (hubei, `docker compose run --no-deps`) against a server
#                  with a quorum of one, reading its own mounted, read-only data file; checks
#                  the server's health check turns healthy and that the client sees only its
#                  own province's data file and its own certificate and key
#   6. down        `docker compose down -v` (also on failure, from the EXIT trap)
#
# Settings: BASE_IMAGE (default: build fedstock-base:bookworm locally, as no registry is
# assumed; e.g. BASE_IMAGE=python:3.11-slim where one is reachable), FEDSTOCK_TEST_PROJECT
# [fedstock-test], FEDSTOCK_TEST_ROUNDS [2], FEDSTOCK_TEST_ROWS [3000], FEDSTOCK_TEST_MODEL
# [lr], FEDSTOCK_TEST_TIMEOUT [600] seconds for `up`, KEEP_LOGS=1 to keep the log directory,
# FEDSTOCK_INSECURE=1 to test without TLS.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
# shellcheck source=../../docker/env.sh
source docker/env.sh

PROJECT="${FEDSTOCK_TEST_PROJECT:-fedstock-test}"
UP_TIMEOUT="${FEDSTOCK_TEST_TIMEOUT:-600}"
ROUNDS="${FEDSTOCK_TEST_ROUNDS:-2}"
ROWS="${FEDSTOCK_TEST_ROWS:-3000}"
SEED=7
PROVINCES=(hubei fujian sichuan shandong beijing zhejiang jiangsu guangdong shanghai)

# What the compose file reads. The test's own values, whatever the caller's shell holds.
export FEDSTOCK_IMAGE="${FEDSTOCK_TEST_IMAGE:-fedstock:compose-test}"
export FEDSTOCK_ROUNDS="$ROUNDS" FEDSTOCK_ROWS="$ROWS" FEDSTOCK_SEED="$SEED"
export FEDSTOCK_MODEL="${FEDSTOCK_TEST_MODEL:-lr}" FEDSTOCK_MIN_CLIENTS=9 FEDSTOCK_PORT=50051
unset FEDSTOCK_DATA_DIR FEDSTOCK_ROUND_TIMEOUT FEDSTOCK_HEALTH_PORT
# Mutual TLS (the compose default) unless the caller asks for FEDSTOCK_INSECURE=1.
[ "${FEDSTOCK_INSECURE:-}" = 1 ] || unset FEDSTOCK_INSECURE
# Plain progress output in logs.
export COMPOSE_ANSI=never COMPOSE_PROGRESS=plain

work="$(mktemp -d "${TMPDIR:-/tmp}/fedstock-compose-test.XXXXXX")"
compose=("$DOCKER" compose -p "$PROJECT" -f docker-compose.yml)
compose_data=("${compose[@]}" -f docker/compose.data.yml)

# --- reporting -------------------------------------------------------------------------------
t_total=$SECONDS
scenarios=2 # the federation (up) and one province alone (solo)
passed=0
timings=()
step_name=""
step_start=0
step() {
    step_name="$1"
    step_start=$SECONDS
    printf '\n=== %s ===\n' "$step_name"
}
done_step() {
    timings+=("$(printf '%-12s %4ss' "$step_name" $((SECONDS - step_start)))")
    printf -- '--- %s: %ss\n' "$step_name" $((SECONDS - step_start))
}
report() {
    printf '\n=== timings ===\n'
    local line
    for line in "${timings[@]}"; do printf '%s\n' "$line"; done
    printf '%-12s %4ss\n' total $((SECONDS - t_total))
}
fail() {
    printf '\nFAIL (%s): %s\n' "$step_name" "$*" >&2
    if [ -s "$work/compose.log" ]; then
        printf -- '--- last lines of the compose output (%s) ---\n' "$work/compose.log" >&2
        tail -n 60 "$work/compose.log" >&2
    fi
    if "$DOCKER" info >/dev/null 2>&1; then
        printf -- '--- last lines of the server log ---\n' >&2
        "${compose[@]}" logs --no-color --tail 30 server >&2 2>/dev/null || true
    fi
    KEEP_LOGS=1
    exit 1
}

teardown() {
    local status=$?
    set +e
    sampler_stop
    if "$DOCKER" info >/dev/null 2>&1 && "$DOCKER" compose version >/dev/null 2>&1; then
        step down
        "${compose_data[@]}" down -v --remove-orphans --timeout 10 >>"$work/down.log" 2>&1 ||
            { cat "$work/down.log" >&2; status=1; }
        # Earlier builds of the test image, left untagged by this one (not the user's images).
        "$DOCKER" image prune -f --filter label=org.opencontainers.image.title=fedstock \
            >/dev/null 2>&1
        done_step
    fi
    report
    if [ "${KEEP_LOGS:-0}" = 1 ]; then
        printf 'logs kept in %s\n' "$work"
    else
        rm -rf "$work"
    fi
    # A plain closing line that test-log readers recognise.
    printf '\ncompose: %d passed, %d failed\n' "$passed" $((scenarios - passed))
    if [ "$status" -eq 0 ]; then
        printf 'PASS: compose test\n'
    else
        printf 'FAIL: compose test (exit %s)\n' "$status" >&2
    fi
    exit "$status"
}
trap teardown EXIT

# Best-effort peak memory of the project's containers: the sum of their anonymous memory
# (what `docker stats` calls usage, less the page cache), read from their cgroups twice a
# second while they run. Knows cgroup v1 and v2 with either cgroup driver; silent otherwise.
container_rss_bytes() {
    local id="$1" dir
    for dir in "/sys/fs/cgroup/memory/docker/$id" "/sys/fs/cgroup/memory/system.slice/docker-$id.scope" \
        "/sys/fs/cgroup/docker/$id" "/sys/fs/cgroup/system.slice/docker-$id.scope"; do
        if [ -r "$dir/memory.stat" ]; then
            # v1: total_rss; v2: anon.
            awk '$1 == "total_rss" || $1 == "anon" { print $2; exit }' "$dir/memory.stat"
            return
        fi
    done
}
sampler_pid=""
sampler_start() {
    (
        peak=0
        while :; do
            now=0
            for id in $("$DOCKER" ps -q --no-trunc --filter "label=com.docker.compose.project=$PROJECT"); do
                now=$((now + $(container_rss_bytes "$id" || true) + 0))
            done
            if [ "$now" -gt "$peak" ]; then
                peak="$now"
                echo $((peak >> 20)) >"$work/peak_mib"
            fi
            sleep 0.5
        done
    ) &
    sampler_pid=$!
}
sampler_stop() {
    if [ -n "$sampler_pid" ]; then
        kill "$sampler_pid" 2>/dev/null || true
        wait "$sampler_pid" 2>/dev/null || true
        sampler_pid=""
    fi
}

# "service=exit-code" for every container of the project, one a line.
exit_codes() {
    "${compose[@]}" ps -a --format '{{.Service}}={{.ExitCode}}'
}

# --- 1. engine -------------------------------------------------------------------------------
step engine
bash docker/engine.sh || fail "docker/engine.sh failed"
# Pick the client again: Debian's /usr/bin/docker may have just been installed.
# shellcheck source=../../docker/env.sh
source docker/env.sh
"$DOCKER" version --format 'client {{.Client.Version}}, engine {{.Server.Version}}'
"$DOCKER" compose version
# The engine reads the files generated for twelve members (python -m server.compose
# [--overlay data|he]; tests/test_compose_file.py checks their structure without an engine).
printf 'name\n' >"$work/members.csv"
for i in $(seq 1 12); do printf 'member%d\n' "$i" >>"$work/members.csv"; done
(
    cd "$work" &&
        PYTHONPATH="$repo" python3 -m server.compose --members members.csv >compose.yml &&
        for overlay in data he; do
            PYTHONPATH="$repo" python3 -m server.compose --members members.csv \
                --overlay "$overlay" >"compose.$overlay.yml"
        done
) || fail "python -m server.compose failed"
# The compose file alone and with its overrides: the services, and each member's mounts.
for files in "compose.yml" "compose.yml compose.data.yml" "compose.yml compose.he.yml" \
    "compose.yml compose.data.yml compose.he.yml"; do
    given=()
    for file in $files; do given+=(-f "$file"); done
    (cd "$work" && "$DOCKER" compose "${given[@]}" config --format json >config.json) ||
        fail "the engine refused the generated twelve-member files: $files"
    extra=()
    [[ "$files" != *compose.he.yml* ]] || extra=(he-keys)
    echo "$files:"
    python3 tests/compose/check_config.py "$work/config.json" --members "$work/members.csv" \
        --services "${extra[@]}" || fail "the engine's reading of $files is wrong"
done
done_step

# --- 2. base image ---------------------------------------------------------------------------
step base-image
if [ -n "${BASE_IMAGE:-}" ]; then
    echo "using BASE_IMAGE=$BASE_IMAGE as given"
else
    # No registry is assumed: build the stand-in for python:3.11-slim (skipped if present).
    BASE_IMAGE="fedstock-base:bookworm"
    bash docker/base-image.sh "$BASE_IMAGE" || fail "docker/base-image.sh failed"
fi
export BASE_IMAGE
done_step

# --- 3. project image ------------------------------------------------------------------------
step image
"${compose[@]}" build server >"$work/build.log" 2>&1 ||
    { tail -n 40 "$work/build.log" >&2; fail "image build failed (log: $work/build.log)"; }
"$DOCKER" run --rm "$FEDSTOCK_IMAGE" python -m server --help >/dev/null ||
    fail "the image cannot run python -m server --help"
size="$("$DOCKER" image inspect -f '{{.Size}}' "$FEDSTOCK_IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
echo "built $FEDSTOCK_IMAGE on $BASE_IMAGE: $size"
done_step

# --- 4. the nine-province federation ---------------------------------------------------------
step up
# A leftover from an interrupted run would make `up` reuse old containers and results.
"${compose_data[@]}" down -v --remove-orphans --timeout 10 >/dev/null 2>&1 || true
echo "docker compose -p $PROJECT up: $ROUNDS rounds, $ROWS synthetic rows, model $FEDSTOCK_MODEL"
sampler_start
up_start=$SECONDS
up_status=0
timeout "$UP_TIMEOUT" "${compose[@]}" up --no-build --abort-on-container-failure \
    >"$work/compose.log" 2>&1 || up_status=$?
sampler_stop
echo "docker compose up returned $up_status after $((SECONDS - up_start))s"
grep -E 'exited with code|federation stopped|ERROR' "$work/compose.log" | sed 's/\x1b\[[0-9;]*[A-Za-z]//g' || true
[ "$up_status" -ne 124 ] || fail "docker compose up did not finish within ${UP_TIMEOUT}s"
codes="$(exit_codes)"
bad=()
for service in certs server "${PROVINCES[@]}"; do
    grep -qx "$service=0" <<<"$codes" ||
        bad+=("$service=$(grep "^$service=" <<<"$codes" | cut -d= -f2 | xargs || true)")
done
[ "${#bad[@]}" -eq 0 ] || fail "containers did not exit 0: ${bad[*]}"
[ "$up_status" -eq 0 ] || fail "docker compose up exited $up_status"
"${compose[@]}" cp server:/results/results.json "$work/results.json" >/dev/null 2>&1 ||
    fail "could not copy /results/results.json out of the server container"
python3 tests/compose/check_results.py "$work/results.json" --clients 9 --rounds "$ROUNDS" ||
    fail "results file does not show the nine-province federation"
if [ -s "$work/peak_mib" ]; then
    echo "peak memory of the ten containers (sampled): $(cat "$work/peak_mib") MiB"
fi
passed=$((passed + 1))
done_step

# --- 5. one province alone, on mounted data --------------------------------------------------
step solo
"${compose[@]}" down -v --timeout 10 >/dev/null 2>&1
export FEDSTOCK_DATA_DIR="$work/data"
mkdir -p "$FEDSTOCK_DATA_DIR"
# Written as the calling user (the image's user may not write here); readable by all.
"$DOCKER" run --rm --user "$(id -u):$(id -g)" -v "$FEDSTOCK_DATA_DIR:/out" "$FEDSTOCK_IMAGE" \
    python -m common.data synth --rows "$ROWS" --seed "$SEED" --out /out >/dev/null ||
    fail "python -m common.data synth failed in the image"
chmod -R a+rX "$FEDSTOCK_DATA_DIR"

FEDSTOCK_MIN_CLIENTS=1 "${compose[@]}" up -d --no-build server >"$work/compose.log" 2>&1 ||
    fail "could not start the server alone"
server_id="$("${compose[@]}" ps -q server)"
health=""
for _ in $(seq 1 60); do
    health="$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$server_id")"
    [ "$health" = healthy ] && break
    sleep 1
done
[ "$health" = healthy ] || fail "server health check did not turn healthy within 60s: $health"
echo "server healthy (python -m server.healthcheck)"

seen="$("${compose_data[@]}" run --rm --no-deps -T hubei ls -A /data 2>>"$work/compose.log")" ||
    fail "could not list /data in the hubei container"
[ "$seen" = hubei.parquet ] || fail "hubei's container sees in /data: $(echo "$seen" | xargs)"
echo "hubei's container sees only /data/hubei.parquet"
if [ "${FEDSTOCK_INSECURE:-}" != 1 ]; then
    seen="$("${compose[@]}" run --rm --no-deps -T hubei ls -A /certs 2>>"$work/compose.log" | xargs)" ||
        fail "could not list /certs in the hubei container"
    [ "$seen" = "ca.pem hubei.key hubei.pem" ] || fail "hubei's container sees in /certs: $seen"
    echo "hubei's container holds only its own identity: /certs/{ca.pem,hubei.key,hubei.pem}"
fi

solo_status=0
timeout 300 "${compose_data[@]}" run --rm --no-deps -T hubei >>"$work/compose.log" 2>&1 ||
    solo_status=$?
[ "$solo_status" -eq 0 ] || fail "the hubei client alone exited $solo_status"
server_status="$(timeout 120 "$DOCKER" wait "$server_id")" || fail "server did not exit in 120s"
[ "$server_status" = 0 ] || fail "server with one client exited $server_status"
"${compose[@]}" cp server:/results/results.json "$work/solo.json" >/dev/null 2>&1 ||
    fail "could not copy the solo results"
python3 tests/compose/check_results.py "$work/solo.json" --clients 1 --rounds "$ROUNDS" ||
    fail "solo results are wrong"
passed=$((passed + 1))
done_step
