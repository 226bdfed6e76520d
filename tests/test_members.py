"""Members beyond the paper's nine: the file that names them, and the market dealt among them."""

import numpy as np
import pytest

from common.data.schema import DataError
from common.data.synthetic import MAX_MEMBERS, province_rows, synthesize, synthesize_province
from common.members import PAPER, Member, Members, MembersError, load
from common.provinces import PROVINCES

TEN = Members((*PAPER.members, Member("chongqing", "Chongqing", "fedstock-chongqing")))


def test_the_default_members_are_the_papers_nine_provinces():
    assert load(None) is PAPER
    assert PAPER.names == PROVINCES
    assert all(m.identity == m.name for m in PAPER)


def test_a_csv_file_names_members_with_display_names_and_identities(tmp_path):
    path = tmp_path / "members.csv"
    path.write_text("name,display_name,identity\nhubei,Hubei,hubei\nchongqing,,cq-bank\ntibet\n")
    members = load(path)
    assert members.names == ("hubei", "chongqing", "tibet")
    assert [m.display_name for m in members] == ["Hubei", "Chongqing", "Tibet"]
    assert members.by_identity("cq-bank") == "chongqing" and members.by_identity("x") is None
    assert members.check(" Tibet ") == "tibet"


def test_a_toml_file_names_the_same_members(tmp_path):
    path = tmp_path / "members.toml"
    path.write_text(
        '[[member]]\nname = "hubei"\n\n[[member]]\nname = "chongqing"\nidentity = "cq-bank"\n'
    )
    assert load(path).names == ("hubei", "chongqing")
    assert load(path).by_identity("cq-bank") == "chongqing"


@pytest.mark.parametrize(
    ("text", "suffix", "message"),
    [
        ("province\nhubei\n", ".csv", "the first line must be a header naming name"),
        ("name,colour\nhubei,red\n", ".csv", "unknown columns colour"),
        ("name\nhubei\nhubei\n", ".csv", "name used by more than one member: hubei"),
        ("name,identity\na,x\nb,x\n", ".csv", "identity used by more than one member: x"),
        ("name\nHu Bei\n", ".csv", "must be 1-40 lowercase letters"),
        ("name\n", ".csv", "a federation needs at least one member"),
        ("name,identity\n,x\n", ".csv", "line 2: a member without a name"),
        ("[[member]\n", ".toml", "not valid TOML"),
        ('[[member]]\nname = "a"\nsize = 3\n', ".toml", "member 1: unknown keys size"),
    ],
)
def test_a_bad_members_file_is_refused_saying_where(tmp_path, text, suffix, message):
    path = tmp_path / f"members{suffix}"
    path.write_text(text)
    with pytest.raises(MembersError, match=message) as caught:
        load(path)
    assert str(path) in str(caught.value)


def test_a_missing_members_file_is_refused_by_name(tmp_path):
    with pytest.raises(MembersError, match="cannot read the members file"):
        load(tmp_path / "absent.csv")


def test_the_market_deals_every_row_to_the_members_with_federation_unique_codes():
    total = 30_000
    rows = province_rows(total, TEN)
    assert set(rows) == set(TEN.names) and sum(rows.values()) == total
    frames = synthesize(total, 4, TEN)
    assert {name: len(frame) for name, frame in frames.items()} == rows
    codes = [set(frame["code"]) for frame in frames.values()]
    assert sum(map(len, codes)) == len(set().union(*codes))


def test_a_paper_province_keeps_its_codes_whoever_else_is_a_member():
    """Its own seed stream and block of codes: its share of the rows changes with the members."""
    alone = synthesize_province("sichuan", 30_000, 4)
    beside = synthesize_province("sichuan", 30_000, 4, TEN)
    assert len(beside) < len(alone)
    assert alone["code"].iloc[0] == beside["code"].iloc[0] == "002001.XSHE"


def test_a_new_members_data_depends_on_its_name_alone_not_its_place_in_the_file():
    reordered = Members((TEN.members[-1], *TEN.members[:-1]))
    a = synthesize_province("chongqing", 30_000, 4, TEN)
    b = synthesize_province("chongqing", 30_000, 4, reordered)
    np.testing.assert_array_equal(a["close"].to_numpy(), b["close"].to_numpy())


def test_more_members_than_the_synthetic_market_holds_is_refused_clearly():
    many = Members.of(f"m{i}" for i in range(MAX_MEMBERS + 1))
    with pytest.raises(DataError, match=f"at most {MAX_MEMBERS} members"):
        province_rows(1_000_000, many)
    with pytest.raises(DataError, match="unknown member 'chongqing'"):
        synthesize_province("chongqing", 30_000, 4)
