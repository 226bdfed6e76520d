"""The compose overrides for a federation's members: real data files, and HE key shares.

    python -m server.compose --members members.csv --overlay data > compose.data.yml
    python -m server.compose --members members.csv --overlay he > compose.he.yml

Each is laid over the compose file `server.compose` writes for the same members, and, as that
file does, gives each member's container only what is its own: its data file, its key share.
Without `--members`, the outputs are the committed docker/compose.data.yml and
docker/compose.he.yml, for the paper's nine provinces (tests/test_compose_file.py holds them
equal).
"""

from __future__ import annotations

from common.members import PAPER, Members, majority
from server.compose import check_names, file_names

DATA_HEADER = """\
# Override for {main}: train on per-member data files instead of the synthetic
# market. Each member's container sees only its own file, read-only, as /data/<member>.parquet.
# {written}
#
#   FEDSTOCK_DATA_DIR=./data docker compose -f {main} -f {this} up
#
# FEDSTOCK_DATA_DIR [./data, relative to the project directory] must hold <member>.parquet
# for each of the {count} members; `python -m common.data synth --rows N --seed S --out DIR{flag}`
# writes such a set. A missing file is an error (create_host_path: false), not an empty folder.

x-data-env: &data-env
  FEDSTOCK_DATA: /data

services:
"""

DATA_CLIENT = """\
  {name}:
    environment:
      <<: *data-env
    volumes:
      - type: bind
        source: ${{FEDSTOCK_DATA_DIR:-./data}}/{name}.parquet
        target: /data/{name}.parquet
        read_only: true
        bind:
          create_host_path: false
"""

HE_HEADER = """\
# Override for {main}: --privacy he, each member holding only its own key share.
# {written}
#
#   docker compose -f {main} -f {this} up --abort-on-container-failure
#
# The one-shot `he-keys` service is the dealer (docs/he.md): it deals the threshold Paillier key
# once (kept in named volumes until `down -v`), puts each member's share into that member's
# volume only and the public key into the server's, and exits; p and q die with its container.
# FEDSTOCK_HE_THRESHOLD [{threshold}]: how many of the {count} members' partial decryptions decrypt.
# The dealer is trusted: in a real federation the data owners run
# `python -m client.he_keys DIR` in their own key ceremony and hand out the files themselves.

x-he-client: &he-client
  depends_on:
    he-keys:
      condition: service_completed_successfully

services:
  he-keys:
    image: ${{FEDSTOCK_IMAGE:-fedstock:latest}}
    pull_policy: never
    init: true
    user: root
    environment:
      PROVINCES: {names}
      FEDSTOCK_HE_THRESHOLD: ${{FEDSTOCK_HE_THRESHOLD:-{threshold}}}
    command:
      - sh
      - -ec
      - |
        if [ -s /out/server/he.pub ]; then echo "key shares exist; keeping them"; exit 0; fi
        python -m client.he_keys /tmp/he --threshold "$$FEDSTOCK_HE_THRESHOLD" \\
          --provinces "$$(echo $$PROVINCES | tr ' ' ,)"
        cp /tmp/he/he.pub /out/server/
        for p in $$PROVINCES; do cp /tmp/he/$$p.key /out/$$p/; done
        chown -R 10001:10001 /out
        chmod 600 /out/*/*.key
        rm -rf /tmp/he
    volumes:
{dealer_volumes}
  server:
    depends_on:
      he-keys:
        condition: service_completed_successfully
    environment:
      FEDSTOCK_PRIVACY: he
      FEDSTOCK_HE_PUBLIC_KEY: /he/he.pub
    volumes:
      - he-server:/he:ro

"""

HE_CLIENT = """\
  {name}:
    <<: *he-client
    environment: {{FEDSTOCK_HE_KEY: /he/{name}.key}}
    volumes: [he-{name}:/he:ro]
"""


def _written(overlay: str, members_file: str | None) -> str:
    """The header's line on where the file comes from."""
    command = "python -m server.compose"
    if members_file is None:
        return f"Written by `{command} --overlay {overlay}`; it writes one for any --members FILE."
    return f"Written by `{command} --members {members_file} --overlay {overlay}`: write it again."


def render_data(members: Members = PAPER, members_file: str | None = None) -> str:
    """The override mounting each member's own data file into its container only."""
    check_names(members)
    main, this, _ = file_names(members_file)
    text = DATA_HEADER.format(
        main=main,
        this=this,
        written=_written("data", members_file),
        count=len(members),
        flag="" if members_file is None else f" --members {members_file}",
    )
    return text + "".join(DATA_CLIENT.format(name=name) for name in members.names)


def render_he(members: Members = PAPER, members_file: str | None = None) -> str:
    """The override dealing a threshold Paillier key, each member's share into its own volume."""
    check_names(members)
    main, _, this = file_names(members_file)
    text = HE_HEADER.format(
        main=main,
        this=this,
        written=_written("he", members_file),
        threshold=majority(len(members)),
        count=len(members),
        names=" ".join(members.names),
        dealer_volumes="".join(
            f"      - he-{stem}:/out/{stem}\n" for stem in ("server", *members.names)
        ),
    )
    text += "".join(HE_CLIENT.format(name=name) for name in members.names)
    names = ("he-server", *(f"he-{name}" for name in members.names))
    return text + "\nvolumes:\n" + "".join(f"  {name}:\n" for name in names)


OVERLAYS = {"data": render_data, "he": render_he}
