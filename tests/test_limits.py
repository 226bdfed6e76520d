"""The cap on health and reflection streams: in all, and per peer address."""

from server.limits import SideCalls, peer_address


def test_one_address_holds_its_share_and_all_addresses_together_the_total():
    side = SideCalls(total=3, per_peer=2)
    assert side.acquire("ipv4:10.0.0.1") is None and side.acquire("ipv4:10.0.0.1") is None
    assert "your address" in side.acquire("ipv4:10.0.0.1")
    assert side.acquire("ipv4:10.0.0.2") is None
    assert "too many" in side.acquire("ipv4:10.0.0.3")
    side.release("ipv4:10.0.0.1")
    assert side.acquire("ipv4:10.0.0.3") is None


def test_the_port_is_not_part_of_the_address():
    assert peer_address("ipv4:127.0.0.1:5000") == "ipv4:127.0.0.1"
    assert peer_address("ipv6:[::1]:5000") == "ipv6:[::1]"
    assert peer_address("unix:/tmp/socket") == "unix:/tmp/socket"
