"""The compose file and its data and HE overrides written from a members file: one client per
member, each holding only its own identity, data file and key share, and for the paper's nine
exactly the committed docker-compose.yml, docker/compose.data.yml and docker/compose.he.yml. The
engine's own reading of generated files is the compose test's (tests/compose/run.sh), where an
engine runs."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.members import Members, MembersError
from common.provinces import PROVINCES
from server.compose import render
from server.compose_overlays import render_data, render_he

ROOT = Path(__file__).resolve().parent.parent
TWELVE = tuple(f"member{i}" for i in range(1, 13))


def _members_file(folder: Path) -> Path:
    path = folder / "members.csv"
    rows = [f"{name},Member {name[6:]},{name}.example.org" for name in TWELVE]
    path.write_text("name,display_name,identity\n" + "\n".join(rows) + "\n")
    return path


def _generate(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server.compose", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_without_a_members_file_it_writes_the_committed_compose_file():
    made = _generate()
    assert made.returncode == 0, made.stderr
    committed = (ROOT / "docker-compose.yml").read_text()
    assert made.stdout == committed
    assert list(yaml.safe_load(made.stdout)["services"]) == [
        "certs",
        "server",
        *PROVINCES,
    ]


def test_twelve_members_get_a_client_each_holding_only_its_own_identity(tmp_path):
    made = _generate("--members", _members_file(tmp_path).name, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    compose = yaml.safe_load(made.stdout)
    services = compose["services"]
    assert list(services) == ["certs", "server", *TWELVE]
    mount = "./members.csv:/etc/fedstock/members.csv:ro"
    for name in TWELVE:
        client = services[name]
        assert client["command"] == ["python", "-m", "client"]
        assert client["environment"]["FEDSTOCK_PROVINCE"] == name
        assert client["environment"]["FEDSTOCK_MEMBERS"] == "/etc/fedstock/members.csv"
        # Its own certificate volume, its own receipts, the public members file: nothing else.
        assert client["volumes"] == [f"certs-{name}:/certs:ro", f"receipts-{name}:/receipts", mount]
    server = services["server"]
    assert server["environment"]["FEDSTOCK_MEMBERS"] == "/etc/fedstock/members.csv"
    assert server["environment"]["FEDSTOCK_MIN_CLIENTS"] == "${FEDSTOCK_MIN_CLIENTS:-12}"
    assert server["volumes"] == ["results:/results", "certs-server:/certs:ro", mount]
    certs = services["certs"]
    assert certs["environment"]["PROVINCES"].split() == list(TWELVE)
    assert (
        "python -m server.certs --out /tmp/ca --members /etc/fedstock/members.csv"
        in (certs["command"][-1])
    )
    assert certs["volumes"] == [
        "certs-server:/out/server",
        *(f"certs-{name}:/out/{name}" for name in TWELVE),
        mount,
    ]
    assert _named_volumes(services) == set(compose["volumes"])


@pytest.mark.parametrize("overlay", ["data", "he"])
def test_without_a_members_file_it_writes_the_committed_overrides(overlay: str):
    made = _generate("--overlay", overlay)
    assert made.returncode == 0, made.stderr
    assert made.stdout == (ROOT / "docker" / f"compose.{overlay}.yml").read_text()
    assert [name for name in yaml.safe_load(made.stdout)["services"] if name in PROVINCES] == list(
        PROVINCES
    )


def _named_volumes(services: dict) -> set[str]:
    return {
        volume.split(":")[0]
        for service in services.values()
        for volume in service.get("volumes", [])
        if isinstance(volume, str) and not volume.startswith("./")
    }


def test_twelve_members_data_override_mounts_each_only_its_own_file(tmp_path):
    made = _generate("--members", _members_file(tmp_path).name, "--overlay", "data", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    services = yaml.safe_load(made.stdout)["services"]
    assert list(services) == list(TWELVE)
    for name in TWELVE:
        assert services[name]["environment"] == {"FEDSTOCK_DATA": "/data"}
        assert services[name]["volumes"] == [
            {
                "type": "bind",
                "source": f"${{FEDSTOCK_DATA_DIR:-./data}}/{name}.parquet",
                "target": f"/data/{name}.parquet",
                "read_only": True,
                "bind": {"create_host_path": False},
            }
        ]
    assert "--members members.csv" in made.stdout  # how to make the twelve files


def test_twelve_members_he_override_gives_each_only_its_own_share(tmp_path):
    made = _generate("--members", _members_file(tmp_path).name, "--overlay", "he", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    compose = yaml.safe_load(made.stdout)
    services = compose["services"]
    assert list(services) == ["he-keys", "server", *TWELVE]
    dealer = services["he-keys"]
    assert dealer["environment"]["PROVINCES"].split() == list(TWELVE)
    # A majority of twelve, as `python -m client.he_keys` deals by default.
    assert dealer["environment"]["FEDSTOCK_HE_THRESHOLD"] == "${FEDSTOCK_HE_THRESHOLD:-7}"
    assert dealer["volumes"] == ["he-server:/out/server", *(f"he-{n}:/out/{n}" for n in TWELVE)]
    assert services["server"]["volumes"] == ["he-server:/he:ro"]
    for name in TWELVE:
        assert services[name]["environment"] == {"FEDSTOCK_HE_KEY": f"/he/{name}.key"}
        assert services[name]["volumes"] == [f"he-{name}:/he:ro"]
    assert _named_volumes(services) == set(compose["volumes"])


@pytest.mark.parametrize("name", ["server", "he-keys"])
def test_members_named_as_the_compose_files_own_services_are_refused(name: str):
    for write in (render, render_data, render_he):
        with pytest.raises(MembersError, match=name):
            write(Members.of(["hubei", name]), "members.csv")


def test_a_members_file_that_cannot_be_read_is_a_clear_error(tmp_path):
    made = _generate("--members", str(tmp_path / "absent.csv"))
    assert made.returncode == 2
    assert "cannot read the members file" in made.stderr
    assert made.stdout == ""
