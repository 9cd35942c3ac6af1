"""The shared string registry behind puzzles, flow backends, backbones, fusion blocks, models, methods."""
import pytest

from fusionkit.registry import Registry


def test_register_lookup_and_refusing_a_second_owner_of_a_name():
    reg = Registry("widget")

    @reg.register("a")
    def make_a():
        return 1

    assert reg.lookup("a") is make_a and reg.register("a")(make_a) is make_a  # re-registering the same is fine
    with pytest.raises(ValueError, match="widget named 'a' is already registered"):
        reg.register("a")(lambda: 2)
    with pytest.raises(KeyError, match=r"unknown widget 'b'; registered: \['a'\]"):
        reg.lookup("b")
    assert sorted(reg) == ["a"]  # it is a dict: listing and membership as usual
