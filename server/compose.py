"""A compose file for a federation's members: one client service per member.

    python -m server.compose --members members.csv > compose.yml

Each member's client gets only its own identity (its certificate volume holds the CA's
certificate and its own certificate and key) and its own receipts volume; the certs service
issues every identity from the same members file, which the server and the clients read too
(mounted read-only). Without `--members`, the output is the committed docker-compose.yml, the
paper's nine provinces (tests/test_compose_file.py holds the two equal).
"""

from __future__ import annotations

import sys
from pathlib import PurePosixPath

from common.members import PAPER, Members, MembersError

# The services and volumes beside the members' (here and in the overrides of
# server/compose_overlays.py): a member named so would collide with them.
RESERVED = ("certs", "server", "results", "he-keys")
# Where the members file is mounted in every container (its suffix says CSV or TOML).
MOUNTED = PurePosixPath("/etc/fedstock")

# The certs service's first line: nothing to issue when the federation runs without TLS.
SKIP_WITHOUT_TLS = (
    'case "$${FEDSTOCK_INSECURE:-}" in ""|0|false) ;; '
    '*) echo "no TLS: no certificates"; exit 0;; esac'
)

HEADER = """\
{title}
#
#   docker compose up --abort-on-container-failure     # build, train, exit when done
#   docker compose cp server:/results/results.json .   # read the results (also after exit)
#   docker compose down -v                             # remove containers and the results volume
#
# Without a container registry (python:3.11-slim cannot be pulled), first get an engine and a
# local base image, then build on it:
#   bash docker/engine.sh && bash docker/base-image.sh
#   BASE_IMAGE=fedstock-base:bookworm docker compose up --abort-on-container-failure
# tests/compose/run.sh does all of this and checks the outcome.
#
# Settings (environment or an .env file beside this one; defaults in brackets):
#   FEDSTOCK_ROUNDS [3]  FEDSTOCK_MODEL [lr]  FEDSTOCK_MIN_CLIENTS [{quorum}]  FEDSTOCK_PORT [50051]
#   FEDSTOCK_ROWS [270000] total rows of the synthetic market the clients split among them
#   FEDSTOCK_SEED [7]     seed of that market (all clients must share it)
#   FEDSTOCK_ROUND_TIMEOUT  passed to the server only when set
#   FEDSTOCK_HTTP_PORT [50080] the server's live view (web page, /metrics), published on the
#     host's 127.0.0.1 only: http://127.0.0.1:50080/ ; FEDSTOCK_LINGER keeps it up after the run
#   FEDSTOCK_INSECURE [unset]  1: no TLS at all (the certs service still runs, unused)
#   BASE_IMAGE [python:3.11-slim]  base of the image; FEDSTOCK_IMAGE [fedstock:latest] its tag
#
# By default each client synthesizes its own member's share of one synthetic market. To train
# on real per-member files (DIR/<member>.parquet), add the data override, which mounts each
# member's file read-only into its own container only:
#   FEDSTOCK_DATA_DIR=./data docker compose -f {main} -f {data} up
# For --privacy he, the HE override ({he}) gives each member only its own key
# share. {overlays}
#
# Mutual TLS by default: the one-shot `certs` service makes a CA for this project (once; kept
# in named volumes until `down -v`) and hands each container only its own identity: the
# server gets server.pem/.key, each member its <member>.pem/.key, all of them ca.pem;
# the CA's key is not kept anywhere. The health check uses the server's plaintext health
# port on 127.0.0.1 inside its container (FEDSTOCK_HEALTH_PORT), reachable by no one else.
# Each member keeps its receipts of the server's ledger in a volume of its own,
# receipts-<member> (docs/ledger.md).
#
# Only the server builds the image; the clients use it by name (pull_policy: never), so one
# build serves every container. The server's port is not published on the host; the
# clients reach it as server:PORT on the project's network. Only the live view is, on the
# host's 127.0.0.1.

x-image: &image
  image: ${{FEDSTOCK_IMAGE:-fedstock:latest}}
  pull_policy: never
  init: true

x-client: &client
  <<: *image
  # The clients retry with backoff until the server answers, so "started" is enough.
  depends_on:
    certs:
      condition: service_completed_successfully
    server:
      condition: service_started
  command: ["python", "-m", "client"]

x-client-env: &client-env
  FEDSTOCK_SERVER: server:${{FEDSTOCK_PORT:-50051}}
  FEDSTOCK_ROWS: ${{FEDSTOCK_ROWS:-270000}}
  FEDSTOCK_SEED: ${{FEDSTOCK_SEED:-7}}
  FEDSTOCK_TLS_DIR: /certs
  # Each member's own receipts of the server's ledger, in its own volume.
  FEDSTOCK_RECEIPTS: /receipts
  # No value: passed through from the caller's environment only when set there.
  FEDSTOCK_INSECURE:
{members_env}
services:
  # Writes each identity into its own volume, owned by the image's user (uid 10001), then
  # exits; it runs as root only to own the fresh volumes. Keeps existing certificates.
  certs:
    <<: *image
    user: root
    environment:
      FEDSTOCK_INSECURE:
      PROVINCES: {names}
    command:
      - sh
      - -ec
      - |
        {skip_without_tls}
        if [ -s /out/server/ca.pem ]; then echo "certificates exist; keeping them"; exit 0; fi
        python -m server.certs --out /tmp/ca{certs_members}
        cp /tmp/ca/ca.pem /tmp/ca/server.pem /tmp/ca/server.key /out/server/
        for p in $$PROVINCES; do cp /tmp/ca/ca.pem /tmp/ca/$$p.pem /tmp/ca/$$p.key /out/$$p/; done
        chown -R 10001:10001 /out
        chmod 600 /out/*/*.key
        rm -rf /tmp/ca
    volumes:
{certs_volumes}
  server:
    image: ${{FEDSTOCK_IMAGE:-fedstock:latest}}
    init: true
    build:
      context: .
      args:
        BASE_IMAGE: ${{BASE_IMAGE:-python:3.11-slim}}
    depends_on:
      certs:
        condition: service_completed_successfully
    command: ["python", "-m", "server"]
    environment:
      FEDSTOCK_PORT: ${{FEDSTOCK_PORT:-50051}}
      FEDSTOCK_ROUNDS: ${{FEDSTOCK_ROUNDS:-3}}
      FEDSTOCK_MIN_CLIENTS: ${{FEDSTOCK_MIN_CLIENTS:-{quorum}}}
      FEDSTOCK_MODEL: ${{FEDSTOCK_MODEL:-lr}}
      FEDSTOCK_RESULTS: /results/results.json
      FEDSTOCK_TLS_DIR: /certs
      FEDSTOCK_HEALTH_PORT: ${{FEDSTOCK_HEALTH_PORT:-50052}}
      FEDSTOCK_HTTP_PORT: ${{FEDSTOCK_HTTP_PORT:-50080}}
      FEDSTOCK_HTTP_HOST: 0.0.0.0
      FEDSTOCK_LINGER:
      FEDSTOCK_ROUND_TIMEOUT:
      FEDSTOCK_INSECURE:
{server_members}\
    ports:
      - 127.0.0.1:${{FEDSTOCK_HTTP_PORT:-50080}}:${{FEDSTOCK_HTTP_PORT:-50080}}
    # A named volume: it starts out owned by the image's non-root user (the image creates
    # /results for it), works the same for every host user, and outlives the container.
    volumes:
      - results:/results
      - certs-server:/certs:ro
{members_mount}\
    healthcheck:
      test:
        - CMD
        - python
        - -m
        - server.healthcheck
        - --address
        - 127.0.0.1:${{FEDSTOCK_HEALTH_PORT:-50052}}
        - --timeout
        - "3"
      interval: 5s
      timeout: 5s
      retries: 3
      start_period: 20s
"""

CLIENT = """
  {name}:
    <<: *client
    environment:
      <<: *client-env
      FEDSTOCK_PROVINCE: {name}
    volumes:
      - certs-{name}:/certs:ro
      - receipts-{name}:/receipts
{members_mount}"""


def check_names(members: Members) -> None:
    """Refuse members whose services or volumes would be the compose files' own."""
    if clash := sorted(set(RESERVED) & set(members.names)):
        raise MembersError(
            f"member names {', '.join(clash)} are taken by the compose file's own services "
            "and volumes; rename those members"
        )


def file_names(members_file: str | None) -> tuple[str, str, str]:
    """The compose file and its data and HE overrides, as their headers' commands name them:
    the committed files for the paper's nine; otherwise compose.yml (the name compose reads
    without -f) and compose.data.yml, compose.he.yml beside it."""
    if members_file is None:
        return "docker-compose.yml", "docker/compose.data.yml", "docker/compose.he.yml"
    return "compose.yml", "compose.data.yml", "compose.he.yml"


def render(members: Members = PAPER, members_file: str | None = None) -> str:
    """The compose file for `members`; `members_file` is the path (as the compose file will
    resolve it, relative to its own folder) that every container mounts, None for the paper's
    nine, which need none."""
    check_names(members)
    mount = ""
    if members_file is not None:
        if ":" in members_file or not members_file.strip():
            raise MembersError(f"the members file's path {members_file!r} cannot be mounted")
        inside = MOUNTED / f"members{PurePosixPath(members_file).suffix.lower() or '.csv'}"
        # Compose reads a bare name as a named volume: a relative path must start with a dot.
        source = members_file if members_file.startswith(("/", ".", "~")) else f"./{members_file}"
        mount = f"      - {source}:{inside}:ro\n"
    title = (
        "# The nine-province federation: one aggregation server and nine province clients.\n"
        "# Written by `python -m server.compose`, which writes one for any --members FILE."
        if members_file is None
        else f"# A federation of {len(members)} members, one aggregation server and a client for "
        f"each, from\n# {members_file}; written by `python -m server.compose --members "
        f"{members_file}`:\n# write it again rather than edit it."
    )
    main, data, he = file_names(members_file)
    given = "" if members_file is None else f"--members {members_file} "
    text = HEADER.format(
        title=title,
        main=main,
        data=data,
        he=he,
        overlays=f"`python -m server.compose {given}--overlay data|he` writes them.",
        quorum=len(members),
        skip_without_tls=SKIP_WITHOUT_TLS,
        members_env=f"  FEDSTOCK_MEMBERS: {inside}\n" if mount else "",
        names=" ".join(members.names),
        certs_members=f" --members {inside}" if mount else "",
        certs_volumes="".join(
            f"      - certs-{stem}:/out/{stem}\n" for stem in ("server", *members.names)
        )
        + mount,
        server_members=f"      FEDSTOCK_MEMBERS: {inside}\n" if mount else "",
        members_mount=mount,
    )
    text += "".join(CLIENT.format(name=name, members_mount=mount) for name in members.names)
    names = ("results", "certs-server")
    names += tuple(f"certs-{n}" for n in members.names)
    names += tuple(f"receipts-{n}" for n in members.names)
    return text + "\nvolumes:\n" + "".join(f"  {name}:\n" for name in names)


if __name__ == "__main__":  # the command line is server/compose_cli.py
    from server.compose_cli import main

    sys.exit(main())
