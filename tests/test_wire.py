import pytest

from common.wire import from_config, to_config
from proto.fedstock.v1 import federation_pb2 as pb


def test_config_keeps_types():
    values = {"flag": True, "n": 3, "x": 0.5, "name": "lr"}
    back = from_config(to_config(values))
    assert back == values
    assert type(back["flag"]) is bool and type(back["n"]) is int


def test_config_refuses_other_types_and_empty_values():
    with pytest.raises(TypeError):
        to_config({"bad": [1]})
    with pytest.raises(ValueError, match="empty"):
        from_config({"k": pb.ConfigValue()})
