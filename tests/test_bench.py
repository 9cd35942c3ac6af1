"""fusionkit bench: entries, the table, resuming, plugins, the command."""
import json

import pytest

from fusionkit.lab import bench
from fusionkit.lab.bench import BenchSettings, block_entry, final_output, get_entry, import_plugins, markdown_table
from fusionkit.cli import main
from fusionkit.methods import build_model

TINY = BenchSettings(puzzles=("conjunction",), seeds=(0,), videos_per_class=4, test_groups=None, frames=12, size=32,
                     new_length=3, epochs=1, finetune_epochs=1)


@pytest.fixture(autouse=True)
def private_run_cache(tmp_path, monkeypatch):
    """Each test its own run cache (never the project's build/run-cache)."""
    monkeypatch.setenv("FUSIONKIT_BUILD", str(tmp_path / "build"))


def test_markdown_table_rows_columns_and_bold_best():
    acc = {"order": {"late": {"mean": 0.5, "std": 0.1, "seeds": [0.4, 0.6]},
                     "cmmp": {"mean": 0.95, "std": 0.05, "seeds": [0.9, 1.0]}},
           "registration": {"late": {"mean": 0.55, "std": 0.0, "seeds": [0.55]},
                            "cmmp": {"mean": 0.5, "std": 0.0, "seeds": [0.5]}}}
    lines = markdown_table(acc).strip().split("\n")
    assert lines[0] == "| method | order | registration |"
    assert lines[2] == "| late | 0.50 ± 0.10 | **0.55 ± 0.00** |"
    assert lines[3] == "| cmmp | **0.95 ± 0.05** | 0.50 ± 0.00 |"


def test_entries_resolve_registered_blocks_and_reject_unknown_names():
    assert get_entry("cmmp").method == "cmmp"
    entry = get_entry("bilinear")  # a registered fusion block without an entry of its own
    assert entry == block_entry("bilinear") and entry.options["fusion"] == "bilinear" and entry.method == "spatial"
    assert entry.name == "spatial(fusion=bilinear)" and get_entry("spatial(fusion=bilinear)") == entry
    # a block with a row of its own gets that row, by either name
    assert get_entry("sum") is get_entry("spatial(fusion=sum)") is bench.BENCH_ENTRIES["spatial(fusion=sum)"]
    assert list(bench.DEFAULT_ENTRIES) == ["late", "spatial(fusion=sum)", "spatial(fusion=conv)", "conv_fusion", "cmmp",
                                           "ccs(embedding_dim=64)", "cma(position_frequencies=3)"]
    assert all(get_entry(name).name == name for name in bench.DEFAULT_ENTRIES)
    with pytest.raises(KeyError, match="unknown benchmark entry 'nope'.*registered"):
        get_entry("nope")


@pytest.mark.parametrize("name, kwargs, expected", [
    ("late", {}, "late"), ("spatial", {"fusion": "conv"}, "spatial-S"), ("cmmp", {}, "cmmp-S"),
    ("conv_fusion", {"fusion": "conv3d_pool3d"}, "conv_fusion-S"),
    ("spatial", {"fusion": "sum", "keep_flow_tower": True}, "spatial-S")])
def test_final_output_is_what_the_method_predicts_with(name, kwargs, expected):
    model = build_model(name, 4, new_length=2, **kwargs)
    assert final_output(model) == expected == model.output_roles()["fused"]


def test_plugins_register_blocks_from_a_file(tmp_path):
    plugin = tmp_path / "student_blocks.py"
    plugin.write_text(
        "from fusionkit.fusion import FusionBlock, register_fusion\n"
        "@register_fusion('bench_test_gate')\n"
        "class Gate(FusionBlock):\n"
        "    '''Flow gates the RGB map.'''\n"
        "    def fuse(self, rgb, flow):\n"
        "        return rgb * flow.sigmoid(), flow\n")
    import_plugins((str(plugin),))
    assert get_entry("bench_test_gate").mechanism.startswith("Flow gates the RGB map.")
    with pytest.raises(FileNotFoundError, match="plugin file"):
        import_plugins((str(tmp_path / "missing.py"),))


def test_run_benchmark_writes_table_heatmap_and_resumes(tmp_path, monkeypatch):
    kwargs = dict(settings=TINY, data_dir=tmp_path / "data", work_dir=tmp_path / "work", workers=1, device="cpu",
                  progress=False)
    report = bench.run_benchmark(("sum",), **kwargs)  # a block's plain name is its row's, spatial(fusion=sum)
    # late always runs: the others start from it
    assert list(report["accuracy"]["conjunction"]) == ["late", "spatial(fusion=sum)"]
    cell = report["accuracy"]["conjunction"]["spatial(fusion=sum)"]
    assert set(cell) == {"mean", "std", "seeds", "runs", "ci95"} and len(cell["seeds"]) == 1 and 0 <= cell["mean"] <= 1
    assert cell["runs"] == [[0, 0]] and cell["ci95"] is None  # one run: no interval
    assert report["outputs"] == {"late": "late", "spatial(fusion=sum)": "spatial-S"}
    paths = bench.write_benchmark(report, results_dir=tmp_path / "results", figures_dir=tmp_path / "figures")
    saved = json.loads(paths["json"].read_text())
    # a method's default row under accuracy, a row with options of its own under variants, by output name
    assert saved["accuracy"]["conjunction"] == {"late": report["accuracy"]["conjunction"]["late"]}
    assert saved["variants"]["spatial(fusion=sum)"]["conjunction"]["spatial-S"] == cell
    assert saved["extra"]["mechanisms"]["spatial(fusion=sum)"]
    assert "| spatial(fusion=sum) |" in paths["markdown"].read_text() and paths["heatmap"].stat().st_size > 0

    def no_training(job):
        raise AssertionError("a finished job was trained again")

    monkeypatch.setattr(bench, "_run_job", no_training)
    again = bench.run_benchmark(("sum",), resume=True, **kwargs)
    assert again["accuracy"] == report["accuracy"] and again["wall_seconds"] == 0.0


def test_bench_command_quick(tmp_path, capsys):
    code = main(["bench", "--quick", "--methods", "late", "--puzzles", "registration", "--workers", "1",
                 "--data", str(tmp_path / "data"), "--work-dir", str(tmp_path / "work"),
                 "--figures", str(tmp_path / "figures"), "--quiet", "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| method | registration |" in out and "| late |" in out
    assert (tmp_path / "figures" / "benchmark_heatmap.png").exists()
    assert (tmp_path / "figures" / "results" / "benchmark.md").exists()


def test_bench_command_rejects_unknown_entries(tmp_path, capsys):
    code = main(["bench", "--quick", "--methods", "nope", "--data", str(tmp_path), "--quiet"])
    assert code == 2 and "unknown benchmark entry" in capsys.readouterr().err


def test_bench_help_names_the_default_entries(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    for name in bench.DEFAULT_ENTRIES:
        assert name in out
