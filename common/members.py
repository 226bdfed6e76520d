"""Who may join a federation: its members, each a name, a display name and a certificate identity.

The paper's nine provinces are the default; `--members FILE` (CSV or TOML) names any others, so a
tenth data owner, or a federation of hundreds, is a file rather than a code change. The same
file is read by the server (who may join), `server.certs` (whose certificates to issue), the
clients (their own name, and how the synthetic market deals its rows) and compose.
"""

from __future__ import annotations

import csv
import re
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from common.provinces import PROVINCES

# A member's name is part of file names (certificates, keys, receipts) and log lines.
NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")
COLUMNS = ("name", "display_name", "identity")


class MembersError(ValueError):
    """A members file that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Member:
    name: str  # what the client joins as, and its files are named after
    display_name: str  # what people read in tables
    identity: str  # the common name its TLS certificate must carry


@dataclass(frozen=True)
class Members:
    members: tuple[Member, ...]

    def __post_init__(self) -> None:
        if not self.members:
            raise MembersError("a federation needs at least one member")
        for field in ("name", "identity"):
            values = [getattr(member, field) for member in self.members]
            if repeated := sorted({v for v in values if values.count(v) > 1}):
                raise MembersError(f"{field} used by more than one member: {', '.join(repeated)}")
        for member in self.members:
            if not NAME.fullmatch(member.name):
                raise MembersError(
                    f"member name {member.name[:60]!r} must be 1-40 lowercase letters, digits, "
                    "'-' or '_', starting with a letter"
                )
            if not member.identity or len(member.identity) > 64:
                raise MembersError(f"{member.name}: identity must be 1-64 characters")

    @classmethod
    def of(cls, names: Iterable[str]) -> Members:
        """Members whose identity is their name, as the paper's provinces'."""
        return cls(tuple(Member(name, name.capitalize(), name) for name in names))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(member.name for member in self.members)

    def __iter__(self) -> Iterator[Member]:
        return iter(self.members)

    def __str__(self) -> str:
        """Short enough for a log line or the results' record of the settings."""
        shown = ", ".join(self.names[:12]) + (" ..." if len(self) > 12 else "")
        return f"{len(self)} members: {shown}"

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def index(self, name: str) -> int:
        return self.names.index(name)

    def member(self, name: str) -> Member:
        return self.members[self.index(name)]

    def check(self, name: str) -> str:
        """The member's name as given (spaces and case forgiven), or ValueError naming the
        members (the first few of a long list)."""
        key = name.strip().lower()
        if key not in self.names:
            raise ValueError(f"unknown member {name[:60]!r}; expected one of the {self}")
        return key

    def by_identity(self, identity: str | None) -> str | None:
        """The name of the member whose certificate names `identity`, if any."""
        for member in self.members:
            if member.identity == identity:
                return member.name
        return None


PAPER = Members.of(PROVINCES)


def majority(members: int) -> int:
    """The default HE threshold: more than half of the share holders (client.he_keys deals
    so; the compose HE override says so)."""
    return members // 2 + 1


def load(path: Path | None) -> Members:
    """The members `path` names (.toml: `[[member]]` tables; otherwise CSV with a header of
    name, display_name, identity; the last two may be left out), or the paper's nine."""
    if path is None:
        return PAPER
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise MembersError(f"cannot read the members file {path}: {error}") from None
    rows = _toml_rows(path, text) if path.suffix.lower() == ".toml" else _csv_rows(path, text)
    members = []
    for where, row in rows:
        name = str(row.get("name") or "").strip()
        if not name:
            raise MembersError(f"{path}, {where}: a member without a name")
        display = str(row.get("display_name") or "").strip() or name.capitalize()
        identity = str(row.get("identity") or "").strip() or name
        members.append(Member(name, display, identity))
    try:
        return Members(tuple(members))
    except MembersError as error:
        raise MembersError(f"{path}: {error}") from None


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict[str, str]]]:
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or "name" not in reader.fieldnames:
        raise MembersError(f"{path}: the first line must be a header naming {', '.join(COLUMNS)}")
    if unknown := sorted(set(reader.fieldnames) - set(COLUMNS)):
        raise MembersError(f"{path}: unknown columns {', '.join(unknown)}")
    return [(f"line {number}", row) for number, row in enumerate(reader, start=2)]


def _toml_rows(path: Path, text: str) -> list[tuple[str, dict[str, str]]]:
    try:
        tables = tomllib.loads(text).get("member", [])
    except tomllib.TOMLDecodeError as error:
        raise MembersError(f"{path}: not valid TOML: {error}") from None
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise MembersError(f"{path}: members must be [[member]] tables")
    for number, table in enumerate(tables, start=1):
        if unknown := sorted(set(table) - set(COLUMNS)):
            raise MembersError(f"{path}, member {number}: unknown keys {', '.join(unknown)}")
    return [(f"member {number}", table) for number, table in enumerate(tables, start=1)]
