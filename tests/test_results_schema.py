"""The results files keep one schema: accuracy[dataset][output], variants under their own key."""
import json
from pathlib import Path

import pytest

from fusionkit.lab.results import save_results, seed_summary, validate_results

RESULTS = sorted((Path(__file__).resolve().parent.parent / "figures" / "results").glob("*.json"))


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.stem)
def test_every_committed_results_file_follows_the_schema(path):
    assert validate_results(json.loads(path.read_text())) == []


def test_there_are_committed_results():
    assert len(RESULTS) >= 10


def test_the_old_keys_break_the_schema_and_every_problem_is_named():
    s = seed_summary([0.5, 1.0])
    problems = validate_results({"notebook": "x", "params": {}, "extra": {},
                                 "accuracy": {"registration (where)": {"conv@stem": s},
                                              "order": {"cmmp-R (SUM)": s, "conv3d_pool3d+": s, "cma-S": {"mean": 1}}}})
    assert len(problems) == 4
    assert "'registration (where)' is not a dataset" in problems[0]
    assert any("'cmmp-R (SUM)' is not a model output" in p for p in problems)
    assert any("'conv3d_pool3d+' is not a model output" in p for p in problems)
    assert any("['cma-S'] must be seed_summary" in p for p in problems)


def test_variants_follow_the_same_shape(tmp_path):
    s = seed_summary([1.0])
    path = save_results("t", {}, {"order": {"late": s}}, variants={"fusion=pool3d": {"order": {"conv_fusion-S": s}}},
                        results_dir=tmp_path)
    assert json.loads(path.read_text())["variants"]["fusion=pool3d"]["order"]["conv_fusion-S"] == s
    with pytest.raises(ValueError, match=r"variants\['SUM'\]\['order'\]: 'sum' is not a model output"):
        save_results("t", {}, {}, variants={"SUM": {"order": {"sum": s}}}, results_dir=tmp_path / "no")
    assert not (tmp_path / "no").exists()  # nothing written


def test_results_record_the_machine_their_numbers_come_from(tmp_path):
    """Fixed seeds give the same numbers only on the same kind of CPU: every results file says which."""
    import torch

    from fusionkit.lab.machine import cpu_model

    s = seed_summary([1.0])
    extra = json.loads(save_results("t", {}, {"order": {"late": s}}, results_dir=tmp_path).read_text())["extra"]
    assert extra["machine"] == {"cpu_model": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    given = {"cpu_model": "elsewhere"}  # a caller's own record (a benchmark's fuller one) is kept
    saved = save_results("t", {}, {"order": {"late": s}}, extra={"machine": given, "seconds": 1}, results_dir=tmp_path)
    assert json.loads(saved.read_text())["extra"] == {"machine": given, "seconds": 1}
