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


def test_redefining_the_same_class_replaces_it_but_another_name_clash_fails():
    """A notebook cell that defines and registers a block runs again: same module and qualname."""
    reg = Registry("widget")
    namespace = {"reg": reg}
    source = "@reg.register('w')\nclass Block:\n    pass\n"
    exec(source, namespace)
    first = reg.lookup("w")
    exec(source, namespace)  # the cell re-run: a new class object of the same definition
    assert reg.lookup("w") is namespace["Block"] and reg.lookup("w") is not first

    class Other:
        pass

    with pytest.raises(ValueError, match="widget named 'w' is already registered"):
        reg.register("w")(Other)
