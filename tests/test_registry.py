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



def test_a_provider_is_imported_on_the_first_read_or_outside_registration(tmp_path, monkeypatch):
    """A core registry filled by a module of a higher layer: that module is imported when the registry
    is first read, so its entries are there without the core importing it at import time."""
    import importlib
    import sys

    core, provider = "fusionkit_test_core", "fusionkit_test_provider"
    (tmp_path / f"{core}.py").write_text(
        "from fusionkit.registry import Registry\n"
        f"WIDGETS = Registry('widget', provider={provider!r}, entries={{'core': max}})\n")
    (tmp_path / f"{provider}.py").write_text(f"from {core} import WIDGETS\nWIDGETS.register('built_in')(len)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in (core, provider):
        monkeypatch.delitem(sys.modules, name, raising=False)

    widgets = importlib.import_module(core).WIDGETS
    assert provider not in sys.modules
    assert dict.__contains__(widgets, "core")  # the registry's own entries need no import
    assert "built_in" in widgets and provider in sys.modules  # the first read loaded the provider
    assert widgets.lookup("built_in") is len and sorted(widgets) == ["built_in", "core"]

    # registering from outside the provider first loads the built-ins, so their names stay theirs
    for name in (core, provider):
        del sys.modules[name]
    widgets = importlib.import_module(core).WIDGETS
    with pytest.raises(ValueError, match="widget named 'built_in' is already registered"):
        widgets.register("built_in")(min)
    assert widgets.lookup("built_in") is len
