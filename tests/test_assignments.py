"""Course assignments: the student contract end to end, the block checker (each broken block fails
the check meant to catch it, with a message that says what to change), and the instructor's two
commands on the assignment notebooks (solutions get full marks; released versions fail every check)."""
import inspect
import json
import re

import nbformat
import numpy as np
import pytest
import torch
from torch import nn

from fusionkit import cli
from fusionkit.lab.assignments import CHECKS, CheckReport, TrainingCheck, check_block, register_check
from fusionkit.lab.assignments.check import CheckFailed
from fusionkit.lab.assignments.notebooks import (ASSIGNMENTS_DIR, AssignmentError, check_options, grade_notebook,
                                                 is_manual, is_test, manual_answers, release_notebook,
                                                 restore_locked_cells, validate_source)
from fusionkit.fusion import FusionBlock, register_fusion
from fusionkit.fusion import conv1x1
from fusionkit.methods.conv_fusion import spatial_blocks
from fusionkit.methods import build_model
from fusionkit.training.trainer import TrainConfig, Trainer
from tests.helpers import SyntheticTwoStream

ASSIGNMENTS = sorted(ASSIGNMENTS_DIR.glob("*.ipynb"))
DEFAULT = [name for name, check in CHECKS.items() if check.by_default]  # what check_block runs unless told
QUICK = [name for name in DEFAULT if name != "trains"]  # everything but training, in milliseconds


# --- a block written in a test file, as a student writes one -------------------------------------------
@register_fusion("test_assignments_gate")
class GatedFusion(FusionBlock):
    """rgb + sigmoid(g(flow)) * h(flow), with h zero-initialised: starts as the identity."""

    starts_as = "identity"

    def __init__(self, rgb_channels: int, flow_channels: int):
        super().__init__(rgb_channels, flow_channels)
        self.gate = nn.Conv2d(flow_channels, rgb_channels, 1)
        self.value = nn.Conv2d(flow_channels, rgb_channels, 1)
        nn.init.zeros_(self.value.weight)
        nn.init.zeros_(self.value.bias)

    def fuse(self, rgb, flow):
        return rgb + torch.sigmoid(conv1x1(flow, self.gate)) * conv1x1(flow, self.value), flow


def test_a_block_defined_outside_the_library_is_built_by_name_and_trained():
    model = build_model("spatial", 4, fusion="test_assignments_gate", position="stage1", backbone="tiny",
                        widths=(8, 8, 8), new_length=2, dropout=0.0)
    block = model.fusion_blocks["stage1"]
    assert isinstance(block, GatedFusion)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    history = Trainer(model, SyntheticTwoStream(16, size=16), TrainConfig(epochs=1, batch_size=8, optimizer="adamw",
                                                                         lr=1e-2, progress=False, device="cpu")).fit()
    assert np.isfinite(history[-1]["loss"]) and set(history[-1]["train"]) == {"spatial-S"}
    assert any(not torch.equal(before[k], v) for k, v in block.state_dict().items()), "training reaches the block"
    report = check_block("test_assignments_gate", QUICK)
    assert report.passed and report.score == report.max_score, str(report)


# --- broken blocks: each fails the check meant to catch it ---------------------------------------------
class Base(FusionBlock):
    def __init__(self, rgb_channels, flow_channels):
        super().__init__(rgb_channels, flow_channels)
        if rgb_channels != flow_channels:
            raise ValueError("adds channel d of flow to channel d of rgb: needs equal channel counts")

    def fuse(self, rgb, flow):
        return rgb + flow, flow


class WrongShape(Base):
    def fuse(self, rgb, flow):
        return rgb[:, :, 1:], flow


class Detached(Base):
    def fuse(self, rgb, flow):
        return rgb + flow.detach(), flow


class InPlace(Base):
    def fuse(self, rgb, flow):
        rgb += flow
        return rgb, flow


class Raises(Base):
    def fuse(self, rgb, flow):
        raise RuntimeError("boom in the student's fuse")


class Only2D(Base):
    def __init__(self, rgb_channels, flow_channels):
        super().__init__(rgb_channels, flow_channels)
        self.conv = nn.Conv2d(flow_channels, rgb_channels, 1)

    def fuse(self, rgb, flow):
        return rgb + self.conv(flow), flow


class FalseIdentityClaim(Only2D):
    starts_as = "identity"

    def fuse(self, rgb, flow):
        return rgb + conv1x1(flow, self.conv), flow


class Unseeded(Base):
    def __init__(self, rgb_channels, flow_channels):
        super().__init__(rgb_channels, flow_channels)
        self.w = nn.Parameter(torch.from_numpy(np.random.default_rng().normal(size=rgb_channels)).float())

    def fuse(self, rgb, flow):
        return rgb + self.w.view(-1, *[1] * (rgb.dim() - 2)) * flow, flow


class Stateful(Base):
    def __init__(self, rgb_channels, flow_channels):
        super().__init__(rgb_channels, flow_channels)
        self.calls = 0

    def fuse(self, rgb, flow):
        self.calls += 1
        return rgb + self.calls * flow, flow


class UnusedParameter(Base):
    def __init__(self, rgb_channels, flow_channels):
        super().__init__(rgb_channels, flow_channels)
        self.forgotten = nn.Parameter(torch.ones(3))


class WrongBackward(Base):
    class Double(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return 2 * x

        @staticmethod
        def backward(ctx, grad):
            return 3 * grad  # should be 2

    def fuse(self, rgb, flow):
        return self.Double.apply(rgb) + flow, flow


class OverridesForward(Base):
    def forward(self, rgb, flow):
        return rgb + flow, flow


class MixesBatch(Base):
    """Leaks the batch's mean motion into every video: passes every check but independent_samples."""

    def fuse(self, rgb, flow):
        return rgb + flow + flow.mean(0), flow


class BatchSizeDependent(Base):
    """Depends on how many videos come together, not on the others' content."""

    def fuse(self, rgb, flow):
        return rgb + flow * rgb.shape[0], flow


BROKEN = [  # (block, the checks it fails, a message it must give)
    (WrongShape, {"shapes", "gradients", "gradcheck", "deterministic", "independent_samples", "no_inplace"},
     r"changed the feature shapes"),
    (Detached, {"gradients", "gradcheck"}, r"no gradient reaches the flow input from the fused \(rgb\) output.*\.detach\(\)"),
    (InPlace, {"no_inplace"}, r"modified its rgb input in place.*`rgb = rgb \+ \.\.\.`"),
    (Raises, set(QUICK) - {"contract", "initialisation"}, r"raised RuntimeError: boom in the student's fuse"),
    (Only2D, {"shapes"}, r"3D maps.*fail: layers such as nn.Conv2d take 4D input only.*conv1x1"),
    (FalseIdentityClaim, {"initialisation"}, r"starts_as = 'identity', but at initialisation.*differs from its inputs"),
    (Unseeded, {"deterministic"}, r"differ in 'w': something is drawn from an unseeded generator"),
    (Stateful, {"deterministic", "gradcheck", "independent_samples"},
     r"a second call gives a different output.*keeps state between calls"),
    (UnusedParameter, {"gradients"}, r"parameters \['forgotten'\] get no gradient"),
    (WrongBackward, {"gradcheck"}, r"analytical gradients differ from finite differences.*wrong backward"),
    (OverridesForward, {"contract"}, r"overrides forward: override fuse instead"),
    (MixesBatch, {"independent_samples"},
     r"changing sample 0 of the batch changes the rgb output of samples 1 and 2 .*mixes the videos of a batch"),
    (BatchSizeDependent, {"independent_samples"},
     r"sample 0 run on its own gives a rgb output that differs .* from the same sample run in a batch of 3"),
]


@pytest.mark.parametrize("block, failing, message", BROKEN, ids=[b.__name__ for b, _, _ in BROKEN])
def test_a_broken_block_fails_the_matching_check_with_a_clear_message(block, failing, message):
    # registered under a name so that only the intended checks fail (the contract check wants a name)
    if block is not OverridesForward:
        register_fusion(f"test_assignments_{block.__name__.lower()}")(block)
    report = check_block(block, QUICK)
    assert {r.name for r in report.results if not r.passed} == failing, str(report)
    assert any(re.search(message, r.message, flags=re.S) for r in report.results if not r.passed), str(report)
    assert report.score == report.max_score - sum(r.max_points for r in report.results if r.name in failing)


def test_a_crash_in_the_students_code_keeps_the_students_traceback_only():
    register_fusion("test_assignments_raises")(Raises)
    result = check_block(Raises, ["shapes"])["shapes"]
    assert not result.passed and "boom in the student's fuse" in result.traceback
    assert __file__ in result.traceback and "in fuse" in result.traceback  # the student's frame
    assert "fusionkit/assignments" not in result.traceback  # none of the checker's frames


def test_a_block_that_is_not_registered_or_not_found_fails_with_the_fix():
    class Unregistered(Base):
        pass

    report = check_block(Unregistered, ["contract", "trains"])
    assert not report.passed
    assert all("@register_fusion" in r.message for r in report.results), str(report)
    missing = check_block("test_assignments_no_such_block", QUICK)
    assert not any(r.passed for r in missing.results)
    assert all("no fusion block named 'test_assignments_no_such_block' is registered" in r.message for r in missing.results)


def test_the_training_check_fails_a_block_that_does_not_fuse_and_one_over_budget():
    quick = dict(videos_per_class=8, test_videos_per_class=4, frames=6, size=32, epochs=2)
    report = check_block("test_assignments_gate", ["trains"], training={**quick, "threshold": 1.01})
    assert not report.passed and "stayed below 1.01 for 2 epochs (per epoch:" in report["trains"].message
    over = check_block("test_assignments_gate", ["trains"], training=TrainingCheck(**quick, budget=0.0))
    assert re.search(r"an epoch takes .* times as long as with conv fusion .*; the budget is 0 times",
                     over["trains"].message), over["trains"].message


# --- the checker itself --------------------------------------------------------------------------------
def test_library_blocks_pass_the_contract_checks():
    assert check_block("conv", QUICK, starts_as="sum").passed  # the [I I] initialisation is exactly sum fusion
    assert check_block("conv", ["initialisation"], starts_as="identity")["initialisation"].passed is False
    for name in ("sum", "max", "bilinear"):
        assert check_block(name, QUICK).passed, name


# a renamed copy of the library's conv fusion, as a student might paste it: its source, another class name
CONV_COPY = (inspect.getsource(spatial_blocks.ConvFusion).replace("class ConvFusion(", "class MyBlock(")
             .replace('@register_fusion("conv")\n', ""))


def test_own_design_fails_renamed_copies_of_library_blocks_and_passes_a_new_block():
    namespace = {**vars(spatial_blocks), "__name__": "__main__"}  # the class as a notebook cell defines it
    exec(CONV_COPY, namespace)
    register_fusion("test_assignments_conv_copy")(namespace["MyBlock"])
    copied = check_block("test_assignments_conv_copy", ["own_design"])["own_design"]
    assert not copied.passed and copied.points == 0 and copied.max_points == 3
    assert re.search(r"computes what the library's 'conv' block \(ConvFusion\) computes: with its weights copied "
                     r"into 'conv', the outputs .* agree to 0; a renamed copy of a library block earns no design "
                     r"points", copied.message), copied.message

    @register_fusion("test_assignments_sum_subclass")
    class Renamed(spatial_blocks.SumFusion):  # inherits sum's fuse: its code is the library's
        pass

    inherited = check_block(Renamed, ["own_design"])["own_design"]
    assert not inherited.passed and "Renamed.fuse is the code of the library's 'sum' block (SumFusion.fuse)" in \
        inherited.message
    assert "fusionkit's own block" in check_block("conv", ["own_design"])["own_design"].message
    assert check_block("test_assignments_gate", ["own_design"]).passed  # a gate is no library block
    assert "own_design" not in [r.name for r in check_block("test_assignments_gate", QUICK).results]  # opt-in


def test_instructors_choose_checks_and_points_and_add_their_own():
    report = check_block("sum", {"shapes": 5, "no_inplace": 0.5})
    assert [r.name for r in report.results] == ["shapes", "no_inplace"]
    assert report.max_score == report.score == 5.5
    with pytest.raises(KeyError, match="unknown block check 'nope'"):
        check_block("sum", ["nope"])

    @register_check("test_assignments_small", 1)
    def small(b):
        n = sum(p.numel() for p in b.build(8, 8).parameters())
        if n > 10:
            raise CheckFailed(f"{n} parameters, the limit is 10")
        return f"{n} parameters"

    try:
        assert check_block("sum", ["test_assignments_small"]).passed
        assert check_block("conv", ["test_assignments_small"])["test_assignments_small"].message == \
            "136 parameters, the limit is 10"
    finally:
        CHECKS.pop("test_assignments_small")


def test_reports_round_trip_through_json_and_leave_the_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    report = check_block("test_assignments_gate", ["deterministic", "initialisation"])
    assert torch.equal(torch.rand(3), expected)
    again = CheckReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again.to_dict() == report.to_dict() and "PASS deterministic" in str(again)


# --- the notebook format -------------------------------------------------------------------------------
def _cell(source, **nbgrader):
    meta = {"nbgrader": {"grade": False, "solution": False, "locked": False, "schema_version": 3, **nbgrader}}
    return nbformat.v4.new_code_cell(source, metadata=meta if nbgrader else {})


@pytest.mark.parametrize("cells, error", [
    ([_cell("x = 1\n### BEGIN SOLUTION\nx = 2\n### END SOLUTION")], "solution region outside a solution cell"),
    ([_cell("### BEGIN SOLUTION\nx = 2", solution=True, grade_id="a")], "'BEGIN SOLUTION' without 'END SOLUTION'"),
    ([_cell("assert True", grade=True, locked=True, points=1, grade_id="t"),
      _cell("assert 1", grade=True, locked=True, points=1, grade_id="t")], "unique, non-empty grade_id"),
    ([_cell("assert True", grade=True, locked=True, grade_id="t")], "code cell with points > 0"),
    ([_cell("### BEGIN HIDDEN TESTS\nassert 1\n### END HIDDEN TESTS")], "hidden tests outside a test cell"),
    ([_cell("a rubric", grade=True, solution=True, grade_id="why")], "manually graded answer needs points > 0"),
])
def test_malformed_source_notebooks_are_refused(cells, error):
    with pytest.raises(AssignmentError, match=error):
        validate_source(nbformat.v4.new_notebook(cells=cells), "bad.ipynb")


def test_grading_restores_test_cells_the_student_edited_and_notes_deleted_ones():
    source = nbformat.v4.new_notebook(cells=[
        _cell("x = 1", solution=True, grade_id="answer"),
        _cell("assert x == 1\n### BEGIN HIDDEN TESTS\nassert x > 0\n### END HIDDEN TESTS", grade=True, locked=True,
              points=1, grade_id="t1"),
        _cell("assert x", grade=True, locked=True, points=1, grade_id="t2")])
    submission = nbformat.from_dict(json.loads(nbformat.writes(source)))
    submission.cells[0].source = "x = 2"
    submission.cells[1].source = "pass  # the student 'fixed' the test"
    del submission.cells[2]
    assert restore_locked_cells(submission, source) == ["t2"]
    assert submission.cells[0].source == "x = 2"  # answers are the student's
    assert submission.cells[1].source == source.cells[1].source  # tests are the instructor's, hidden part included


def test_manually_graded_answers_are_released_as_stubs_and_reported_for_a_person(tmp_path):
    """nbgrader's manually graded answer cells: the rubric stays in the source, the student sees
    YOUR ANSWER HERE, and grading lists them (points, the student's answer) outside the automatic score."""
    source = nbformat.v4.new_notebook(cells=[
        _cell("x = 1", solution=True, grade_id="answer"),
        _cell("assert x == 1", grade=True, locked=True, points=2, grade_id="t1"),
        nbformat.v4.new_markdown_cell("**Rubric.** 1 point for saying why.", metadata={"nbgrader": {
            "grade": True, "solution": True, "locked": False, "points": 3, "grade_id": "why", "schema_version": 3}}),
        nbformat.v4.new_markdown_cell("**Rubric.** 1 point.", metadata={"nbgrader": {
            "grade": True, "solution": True, "locked": False, "points": 1, "grade_id": "later", "schema_version": 3}})])
    source.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    validate_source(source, "source.ipynb")
    nbformat.write(source, tmp_path / "source.ipynb")
    released = nbformat.read(release_notebook(tmp_path / "source.ipynb", tmp_path / "release"), as_version=4)
    assert [c.source for c in released.cells[2:]] == ["YOUR ANSWER HERE"] * 2
    assert "Rubric" not in nbformat.writes(released)

    released.cells[0].source = "x = 1"  # the student's code
    released.cells[2].source = "Because the sprites are registered."
    nbformat.write(released, tmp_path / "student.ipynb")
    report = grade_notebook(tmp_path / "student.ipynb", source=tmp_path / "source.ipynb", out=tmp_path / "r.json",
                            executed=tmp_path / "graded.ipynb", data_dir=tmp_path / "data")
    assert (report.score, report.max_score) == (2, 2)  # the automatic part, out of the automatic points
    assert report.extra["manual_points"] == 4
    assert report.extra["manual"] == [
        {"grade_id": "why", "points": 3.0, "status": "needs manual grading", "answer": "Because the sprites are registered."},
        {"grade_id": "later", "points": 1.0, "status": "not answered (the stub is still there)", "answer": "YOUR ANSWER HERE"}]
    text = str(report)
    assert text.splitlines()[0].endswith("2 / 2 points (automatic; 4 more points need manual grading)")
    assert "TODO why" in text and "?/3  needs manual grading (rubric in the instructor's notebook)" in text
    assert json.loads((tmp_path / "r.json").read_text())["manual"] == report.extra["manual"]
    del released.cells[3]  # a deleted answer cell is reported as such
    assert [m["status"] for m in manual_answers(released, source)] == ["needs manual grading",
                                                                       "missing from the submission (deleted?)"]


# --- the assignment notebooks, released and graded ------------------------------------------------------
def test_there_are_assignment_notebooks_with_solutions_and_tests():
    assert [p.stem for p in ASSIGNMENTS] == ["a1_conv_fusion", "a2_design_your_block"]
    for path in ASSIGNMENTS:
        nb = nbformat.read(path, as_version=4)
        validate_source(nb, path)
        assert nb.metadata["fusionkit"]["assignment"] == path.stem
        assert any("BEGIN HIDDEN TESTS" in c.source for c in nb.cells), path.name


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    return tmp_path_factory.mktemp("assignment_data")  # the smoke puzzles, rendered once for all gradings


@pytest.mark.parametrize("path", ASSIGNMENTS, ids=lambda p: p.stem)
def test_the_solution_notebook_gets_full_marks(path, smoke_data, tmp_path):
    report = grade_notebook(path, source=path, out=tmp_path / "report.json", executed=tmp_path / "graded.ipynb",
                            data_dir=smoke_data, figures_dir=tmp_path / "figures")
    assert report.score == report.max_score > 0, str(report)
    assert {r.kind for r in report.results} == {"notebook test", "block check"}
    config = nbformat.read(path, as_version=4).metadata["fusionkit"]["check_block"]
    assert [r.name for r in report.results if r.kind == "block check"] == list(check_options(config)["checks"])
    assert {"independent_samples", "trains"} <= {r.name for r in report.results}
    assert report.extra["manual_points"] == sum(m["points"] for m in report.extra["manual"])
    assert json.loads((tmp_path / "report.json").read_text())["score"] == report.max_score
    results = json.loads((tmp_path / "figures" / "results" / f"{path.stem}.json").read_text())
    assert results["notebook"] == path.stem and results["params"]["SMOKE"] is True
    assert list((tmp_path / "figures").glob(f"{path.stem[:2]}_*.png"))


EXPECTED_RELEASE_FAILURES = {  # what a student who has written nothing is told, per assignment
    "a1_conv_fusion": {"notebook test": "NotImplementedError",
                       "block check": "raised NotImplementedError:  (a `raise NotImplementedError()` stub is still there)"},
    "a2_design_your_block": {"notebook test": "my_block",
                             "block check": "no fusion block named 'my_block' is registered"},
}


@pytest.mark.parametrize("path", ASSIGNMENTS, ids=lambda p: p.stem)
def test_the_released_notebook_has_no_solutions_and_fails_every_check(path, smoke_data, tmp_path, capsys):
    assert cli.main(["assignment", "release", str(path), str(tmp_path / "release")]) == 0
    released = tmp_path / "release" / path.name
    text = released.read_text()
    assert "SOLUTION" not in text and "HIDDEN TESTS" not in text and "raise NotImplementedError()" in text
    nb = nbformat.read(released, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells)
    assert all(c.metadata.get("editable") is False for c in nb.cells if is_test(c))
    assert all(c.metadata.get("editable") is not False and c.metadata["deletable"] is False for c in nb.cells if is_manual(c))

    report_path = tmp_path / "student.grade.json"
    assert cli.main(["assignment", "grade", str(released), "--out", str(report_path), "--data", str(smoke_data)]) == 0
    assert f"report written to {report_path}" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert report["score"] == 0 and report["max_score"] > 0 and report["source"] == str(path)
    for result in report["results"]:
        assert not result["passed"], result
        assert EXPECTED_RELEASE_FAILURES[path.stem][result["kind"]] in result["message"], result
    assert report["cell_errors"] and "NotImplementedError" in report["cell_errors"][0]["error"]
    manual = [c for c in nbformat.read(path, as_version=4).cells if is_manual(c)]
    assert [m["grade_id"] for m in report["manual"]] == [c.metadata["nbgrader"]["grade_id"] for c in manual]
    assert all(m["status"] == "not answered (the stub is still there)" for m in report["manual"])


def test_a_renamed_copy_of_conv_fusion_no_longer_gets_full_marks_in_a2(smoke_data, tmp_path):
    """Every automatic check passes but own_design, and the rationale and analysis wait for a person."""
    source = ASSIGNMENTS_DIR / "a2_design_your_block.ipynb"
    submission = nbformat.read(release_notebook(source, tmp_path / "release"), as_version=4)
    by_id = {c.metadata["nbgrader"]["grade_id"]: c for c in submission.cells if "nbgrader" in c.metadata}
    by_id["your_block"].source = ('BLOCK_NAME = "my_block"\nimport math\n'
                                  'from fusionkit.methods.conv_fusion.spatial_blocks import SpatialFusion, interleave_channels\n\n'
                                  '@register_fusion(BLOCK_NAME)\n' + CONV_COPY)
    for grade_id in ("design_rationale", "analysis"):
        by_id[grade_id].source = "My block is conv fusion with another name."
    nbformat.write(submission, tmp_path / "copy.ipynb")
    report = grade_notebook(tmp_path / "copy.ipynb", source=source, out=tmp_path / "copy.json",
                            executed=tmp_path / "copy.graded.ipynb", data_dir=smoke_data, figures_dir=tmp_path / "figures")
    assert {r.name for r in report.results if not r.passed} == {"own_design"}, str(report)
    assert report.score == report.max_score - report["own_design"].max_points == report.max_score - 4
    assert "library's 'conv' block" in report["own_design"].message
    assert [m["status"] for m in report.extra["manual"]] == ["needs manual grading"] * 2
    assert report.extra["manual_points"] == 8
