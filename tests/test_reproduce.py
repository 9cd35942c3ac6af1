"""The papers' ablation tables (fusionkit.methods.tables), their recipes (fusionkit.methods.training_recipes),
the plateau LR schedule, and `fusionkit reproduce` (fusionkit.lab.reproduce): every buildable row trains,
the claims hold on the paper's numbers, a quick reproduction of one table per paper writes both files."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from fusionkit.data.dataset import build_dataset
from fusionkit.lab.reproduce import reproduce
from fusionkit.methods import build_model, get_method, list_methods, run_method
from fusionkit.methods.tables import (AblationTable, Claim, Column, TABLES, check_claim, get_table, list_tables,
                                      paper_id, rows)
from fusionkit.methods.training_recipes import Recipe, get_recipe, list_recipes
from fusionkit.training.trainer import TrainConfig, Trainer

EXPECTED_TABLES = ["chi2019-table1", "chi2019-table2", "chi2019-table4", "chi2019-table5", "chi2019-table6",
                   "feichtenhofer2016-table1", "feichtenhofer2016-table2", "feichtenhofer2016-table3",
                   "feichtenhofer2016-table4", "feichtenhofer2016-table5", "wang2018-table1", "zhang2019-table3",
                   "zhang2019-table4", "zhang2019-table5"]


# ---- the tables as data -------------------------------------------------------------------------
def test_every_table_is_registered_and_found_by_paper_or_alias():
    assert list_tables() == EXPECTED_TABLES
    assert get_table("feichtenhofer2016", 1) is get_table("conv_fusion", 1) is TABLES["feichtenhofer2016-table1"]
    assert get_table("cmmp", 1).paper == "wang2018" and paper_id("ccs") == "zhang2019" and paper_id("cma") == "chi2019"
    with pytest.raises(KeyError, match="its tables are"):
        get_table("cmmp", 7)
    with pytest.raises(KeyError, match="unknown paper"):
        get_table("nobody2020", 1)


def test_rows_by_name_with_the_papers_numbers():
    t1 = get_table("feichtenhofer2016", 1)
    assert [r.name for r in t1.rows] == ["Sum [22] / Softmax", "Sum (ours) / Softmax", "Max / ReLU5",
                                         "Concatenation / ReLU5", "Bilinear [15] / ReLU5", "Sum / ReLU5", "Conv / ReLU5"]
    conv = t1.row("Conv / ReLU5")
    assert (conv.method, dict(conv.options), dict(conv.paper), conv.parameters) == \
        ("spatial", {"fusion": "conv", "position": "ReLU5"}, {"UCF101 Acc.": 85.96}, 97.58)
    assert t1.row("Sum (ours) / Softmax").method == "late"
    cmmp = get_table("cmmp", 1)
    assert [r.name for r in cmmp.rows] == ["SUM", "MAX", "CMMP+noAL", "SUM+AL", "MAX+AL", "CMMP"]
    assert dict(cmmp.row("CMMP").paper) == {"HMDB51 Spatial": 50.07, "HMDB51 Temporal": 65.23, "HMDB51 Fusion": 66.67}
    assert dict(cmmp.row("CMMP+noAL").options) == {"adversarial": False}
    ccs3 = get_table("ccs", 3)
    assert dict(ccs3.row("TSN / Baseline").options) == {"fusion": None, "shared_embedding": False,
                                                        "ranking_losses": False}
    assert ccs3.row("TSN / Baseline").paper == {"UCF101 RGB": 85.7, "UCF101 Flow": 87.9, "UCF101 RGB+Flow": 93.5,
                                                "HMDB51 RGB+Flow": 68.5}  # the paper's dashes are left out
    ccs4 = get_table("ccs", 4)
    assert [dict(r.train)["extra"] for r in ccs4.rows][1] == {"alpha1": 0.3, "alpha2": 0.3, "alpha3": 0.8}
    cma1 = get_table("cma", 1)
    assert [(r.name, r.method, r.at_iteration) for r in cma1.rows] == [("0", "late", None), ("1", "cma", 1),
                                                                       ("2", "cma", 2), ("3", "cma", 3)]
    assert len({r.run_key() for r in cma1.rows[1:]}) == 1  # the iterations of one run
    cma4 = get_table("cma", 4)
    r, s = cma4.row("CMA_iter1-R / Yes / RGB + Flow"), cma4.row("CMA_iter1-S / Yes / RGB + Flow")
    assert r.run_key() == s.run_key() and (r.role, s.role) == ("rgb", "fused")
    assert dict(r.options)["fusion_options"] == ({"directions": "rgb"}, {})


def test_rows_that_cannot_be_built_say_why():
    not_built = {t: [r.name for r in get_table(*t).not_buildable] for t in
                 [("feichtenhofer2016", 2), ("feichtenhofer2016", 5), ("zhang2019", 3), ("chi2019", 5)]}
    assert not_built == {("feichtenhofer2016", 2): ["ReLU3 + ReLU5 + FC6"],
                         ("feichtenhofer2016", 5): ["Ours (S:VGG-16, T:VGG-M)",
                                                    "Ours (S:VGG-16, T:VGG-16, single tower after fusion)"],
                         ("zhang2019", 3): ["I3D / Baseline", "I3D / CB", "I3D / CS", "I3D / All"],
                         ("chi2019", 5): ["P3D / 12 frames", "P3D / 16 frames", "CMA_iter1 / 12 frames",
                                          "CMA_iter1 / 16 frames"]}
    assert "FC6" in get_table("conv_fusion", 2).row("ReLU3 + ReLU5 + FC6").reason
    assert "mixed backbones" in get_table("conv_fusion", 5).row("Ours (S:VGG-16, T:VGG-M)").reason


@pytest.mark.parametrize("key", EXPECTED_TABLES)
def test_every_claim_holds_on_the_papers_own_numbers(key):
    table = TABLES[key]
    for result in table.check_paper_claims():
        if not any(row.paper for row in table.rows):  # a figure that only plots (CCS Fig. 5a): nothing to check on
            assert result["holds"] is None and "only plots" in table.note, result
        else:
            assert result["holds"] is True, result


def test_parameter_counts_are_those_of_feichtenhofer_tables_1_and_2():
    from fusionkit.methods.conv_fusion.parameter_counts import PAPER_COUNTS

    paper = {(table, row): count for table, row, _, count in PAPER_COUNTS.values()}
    t1, t2 = get_table("conv_fusion", 1), get_table("conv_fusion", 2)
    assert t1.row("Conv / ReLU5").parameters == paper[(1, "Conv, ReLU5")] == 97.58
    assert t1.row("Sum (ours) / Softmax").parameters == paper[(1, "Sum (ours), Softmax")]
    for name in ("ReLU2", "ReLU3", "ReLU4", "ReLU5", "ReLU5 + FC8", "ReLU3 + ReLU5 + FC6"):
        assert t2.row(name).parameters == paper[(2, name)]


def test_a_malformed_table_is_refused_naming_each_problem():
    columns = (Column("Acc.", "fused", "UCF101"),)
    good = rows(columns, ("a", "late", {}, (1.0,)), ("b", "late", {}, (2.0,)))
    with pytest.raises(ValueError, match="no row 'c'.*no column 'HMDB51 Acc.'"):
        AblationTable("wang2018", 99, "t", columns, good,
                      claims=(Claim("x", (("a", ">", "c"), (("a", "HMDB51 Acc."), ">", "b")), "UCF101 Acc."),))
    with pytest.raises(ValueError, match="not buildable and says not why"):
        AblationTable("wang2018", 99, "t", columns, rows(columns, ("a", None, {}, (1.0,), {"buildable": False})))
    with pytest.raises(ValueError, match="2 numbers for 1 columns"):
        rows(columns, ("a", "late", {}, (1.0, 2.0)))


def test_the_ordering_checker_on_hand_made_numbers():
    claim = Claim("conv >= sum > max", (("conv", ">=", "sum"), ("sum", ">", "max")), "acc")
    numbers = {"conv": 90.0, "sum": 90.0, "max": 80.0}
    result = check_claim(claim, lambda row, column: numbers[row])
    assert result["holds"] is True and [r["holds"] for r in result["relations"]] == [True, True]
    numbers["max"] = 90.0  # a tie breaks the strict '>' only
    assert [r["holds"] for r in check_claim(claim, lambda r, c: numbers[r])["relations"]] == [True, False]
    assert check_claim(claim, lambda r, c: numbers[r])["holds"] is False
    # a missing number: not checked (None), unless another relation already fails
    assert check_claim(claim, lambda r, c: None if r == "max" else 95.0)["holds"] is None
    assert check_claim(claim, lambda r, c: {"conv": 1.0, "sum": 2.0}.get(r))["holds"] is False
    # (mean, std): a difference within the summed spreads holds but is not resolved
    spread = check_claim(claim, lambda r, c: {"conv": (92.0, 1.0), "sum": (91.0, 1.0), "max": (80.0, 1.0)}[r])
    assert spread["holds"] is True and spread["resolved"] is False
    assert spread["relations"][0].get("within_noise") and not spread["relations"][1].get("within_noise")
    near = Claim("about equal", (("a", "~", "b"),), "acc", tolerance=1.0)
    assert check_claim(near, lambda r, c: {"a": 85.96, "b": 85.2}[r])["holds"] is True
    assert check_claim(near, lambda r, c: {"a": 85.96, "b": 84.0}[r])["holds"] is False
    # terms may name their own column
    cross = Claim("x", ((("1", "RGB"), ">", ("0", "fused")),), "RGB")
    cells = {("1", "RGB"): 72.17, ("0", "fused"): 71.21}
    result = check_claim(cross, lambda r, c: cells[(r, c)])
    assert result["holds"] is True and result["relations"][0]["b"] == "0 [fused]"


def test_relu_positions_are_stages_of_the_backbone():
    from fusionkit.methods.conv_fusion.tables import relu_position

    assert [relu_position("vggm2048", f"ReLU{k}") for k in (2, 3, 4, 5)] == ["stage1", "stage2", "stage3", "stage4"]
    assert [relu_position("resnet18", f"ReLU{k}") for k in (2, 3, 4, 5)] == ["stage1", "stage2", "stage3", "stage4"]
    assert [relu_position("tiny", f"ReLU{k}") for k in (3, 4, 5)] == ["stem", "stage1", "stage2"]
    with pytest.raises(ValueError, match="has no ReLU2"):
        relu_position("tiny", "ReLU2")


def test_spatial_fuses_at_several_positions_keeping_the_motion_tower():
    model = build_model("spatial", 4, new_length=2, positions=["stem", "stage2"], keep_flow_tower=True)
    assert [str(p) for p in model.positions] == ["stem", "stage2"]
    assert set(model.output_roles()) == {"rgb", "flow", "fused"}
    with pytest.raises(ValueError, match="keep_flow_tower=True"):
        build_model("spatial", 4, new_length=2, positions=["stem", "stage2"])
    with pytest.raises(ValueError, match="not both"):
        build_model("spatial", 4, new_length=2, positions=["stem"], position="stage1")


def test_ccs_without_the_shared_block_is_the_plain_two_stream_network():
    model = build_model("ccs", 4, new_length=2, fusion=None, shared_embedding=False)
    assert model.embedding is None and model.output_roles() == {"rgb": "rgb", "flow": "flow", "fused": "ccs"}
    cb = build_model("ccs", 4, new_length=2, shared_embedding=False)
    assert cb.embedding is None and len(cb.fusion_blocks) == 1 and cb.output_roles()["fused"] == "ccs-S"


# ---- every buildable row trains one step -----------------------------------------------------------
@pytest.fixture(scope="module")
def motion_sets(motion_puzzle, motion_cache):
    common = dict(new_length=2, input_size=32)
    train = build_dataset("ucf101", motion_puzzle, motion_cache, "train", num_segments=2, **common)
    test = build_dataset("ucf101", motion_puzzle, motion_cache, "test", num_segments=2, **common)
    return train, test


def _row_run(table, row):
    """(backbone, options, the run's identity) of a buildable row in the one-step test."""
    backbone = row.options.get("backbone", "tiny")
    try:
        options = table.resolve(row, backbone) if table.resolve else dict(row.options)
    except ValueError:  # ReLU2 is deeper than tiny's three stages: on a deeper backbone
        backbone = "resnet18"
        options = table.resolve(row, backbone)
    options.pop("backbone", None)
    return backbone, options, json.dumps([row.run_key(), backbone, repr(options)])


def _buildable_rows():
    seen = set()
    for key in EXPECTED_TABLES:
        table = TABLES[key]
        for row in table.buildable:
            backbone, options, run = _row_run(table, row)
            if run not in seen:  # rows of one run (in any table) train once
                seen.add(run)
                yield pytest.param(key, row, backbone, options, id=f"{key}:{row.name}")


def test_every_row_of_every_table_is_in_the_one_step_test():
    """Every buildable row of every registered table trains below (rows with one run: once)."""
    assert list_tables() == EXPECTED_TABLES
    trained = {_row_run(TABLES[p.values[0]], p.values[1])[2] for p in _buildable_rows()}
    for key in EXPECTED_TABLES:
        for row in TABLES[key].buildable:
            assert _row_run(TABLES[key], row)[2] in trained, (key, row.name)


@pytest.mark.parametrize("key, row, backbone, options", list(_buildable_rows()))
def test_every_buildable_row_builds_and_trains_one_step(key, row, backbone, options, motion_sets, motion_puzzle,
                                                        motion_cache):
    train_set, _ = motion_sets
    if options.get("concat_segments", 2) > 2:  # a network built for more segments (CCS's concatenation): as many
        train_set = build_dataset("ucf101", motion_puzzle, motion_cache, "train",
                                  num_segments=options["concat_segments"], new_length=2, input_size=32)
    method = get_method(row.method)
    train = {k: v for k, v in dict(row.train).items() if k != "extra"}
    config = TrainConfig(epochs=1, batch_size=len(train_set), optimizer="adamw", lr=1e-3, progress=False,
                         device="cpu", extra=dict(dict(row.train).get("extra", {})), **train)
    if method.schedule == "ccs" and options.get("ranking_losses", True):
        config = replace(config, classes_per_batch=4, videos_per_class=2)
    init_from = None
    if options.get("finetune") == "classifier" and method.pretrain is None:  # the classifiers of a trained network
        init_from = run_method("late", train_set, None, 4, backbone=backbone, config=config)[0]
    model, history, _ = run_method(row.method, train_set, None, 4, backbone=backbone, config=config,
                                   pretrain_config=replace(config, iterations=1), init_from=init_from, **options)
    phases = config.iterations if method.schedule == "alternate" else 1
    assert len(history) == phases and all(h["loss"] == h["loss"] for h in history)  # one epoch a phase, no NaN
    roles = model.output_roles()
    for column in TABLES[key].columns:
        assert (column.role or row.role) in roles


# ---- recipes ---------------------------------------------------------------------------------
def test_every_method_has_a_teaching_and_a_paper_recipe():
    assert {m for m in list_methods()} == {k.split(":")[0] for k in list_recipes()}
    for method in list_methods():
        assert list_recipes(method) == ["paper", "teaching"]
        paper = get_recipe(method, "paper")
        assert paper.notes and paper.source and paper.train.optimizer == "sgd"
        assert (paper.pretrain is not None) == (get_method(method).pretrain is not None)
    with pytest.raises(KeyError, match="no 'fancy' recipe"):
        get_recipe("late", "fancy")


def test_paper_recipes_carry_the_papers_settings():
    f = get_recipe("conv_fusion", "paper")
    assert (f.train.batch_size, f.train.lr, f.train.lr_schedule, f.finetune) == (96, 1e-3, "plateau", "above_fusion")
    assert f.data["segments"] == 5 and "tau" in f.data["sampling"] and "§3.5" in f.notes["finetune"]
    cmmp = get_recipe("cmmp", "paper")
    config, streams = cmmp.config(3570), cmmp.pretrain_config(3570)  # HMDB51 split 1: 3570 training videos
    assert (config.lr, streams.lr, config.batch_size) == (1e-4, 1e-3, 64)
    assert (config.epochs, config.lr_step) == (243, 81)  # 13,500 and 4,500 iterations of 64 videos
    with pytest.raises(ValueError, match="counts SGD iterations"):
        cmmp.config()
    ccs = get_recipe("ccs", "paper")
    assert (ccs.train.epochs, ccs.train.lr_step, ccs.train.extra["alpha3"]) == (400, 50, 0.8)
    cma = get_recipe("cma", "paper")
    assert (cma.train.batch_size, cma.train.lr, cma.model["dropout"], cma.data["ten_crop"]) == (128, 0.01, 0.7, True)
    assert "not stated" in cma.notes["optimizer"]
    text = cma.describe()
    assert text.startswith("cma:paper") and "batch 128" in text and "stops improving" in text


def test_teaching_recipes_are_the_notebooks_settings():
    cmmp = get_recipe("cmmp", "teaching")
    assert (cmmp.pretrain.epochs, cmmp.train.epochs, cmmp.train.lr, cmmp.train.optimizer) == (20, 30, 5e-3, "adamw")
    spatial = get_recipe("spatial", "teaching")
    assert spatial.model == {"dropout": 0.3, "head_hidden": 128} and spatial.finetune == "all"
    ccs = get_recipe("ccs", "teaching")
    assert (ccs.train.classes_per_batch, ccs.train.videos_per_class, ccs.model["embedding_dim"]) == (4, 4, 64)
    assert get_recipe("cma", "teaching").data["test_segments"] == 3


def test_run_method_trains_with_a_recipe_and_explicit_values_win(motion_sets, tmp_path):
    train_set, test_set = motion_sets
    recipe = Recipe("late", "teaching", TrainConfig(epochs=1, batch_size=4, optimizer="adamw", lr=1e-3,
                                                    weight_decay=1e-4, progress=False, device="cpu"),
                    model={"dropout": 0.1})
    run_method("late", train_set, test_set, 4, recipe=recipe, out_dir=tmp_path / "a")
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["model_kwargs"]["dropout"] == 0.1 and run["train"]["epochs"] == 1
    assert run["train"]["weight_decay"] == 1e-4
    run_method("late", train_set, None, 4, recipe=recipe, out_dir=tmp_path / "b", dropout=0.2,
               config=TrainConfig(epochs=2, batch_size=4, progress=False, device="cpu"))
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["model_kwargs"]["dropout"] == 0.2 and run["train"]["epochs"] == 2
    with pytest.raises(ValueError, match="not 'cmmp'"):
        run_method("cmmp", train_set, None, 4, recipe=recipe)


# ---- the plateau LR schedule ---------------------------------------------------------------------
def test_plateau_divides_the_lr_by_ten_after_patience_epochs_without_improvement(motion_sets, tmp_path):
    train_set, test_set = motion_sets
    model = build_model("late", 4, new_length=2)
    config = TrainConfig(epochs=2, batch_size=4, lr=0.01, lr_schedule="plateau", lr_patience=1, progress=False,
                         device="cpu")
    trainer = Trainer(model, train_set, config, out_dir=tmp_path)
    for loss in (1.0, 1.1, 1.2):  # best, 1 bad epoch (tolerated), a 2nd: drop
        trainer._step_plateau({"loss": loss})
    assert trainer.plateau["drops"] == 1 and trainer.plateau["best"] == -1.0
    trainer._step_plateau({"loss": 0.5})  # an improvement resets the count
    assert trainer.plateau == {"best": -0.5, "bad": 0, "drops": 1}
    history = trainer.fit()
    assert history[0]["lr"] == pytest.approx(0.001)  # the drop applies to the next epoch
    # validation accuracy drives it when there is a validation set; a new phase starts at the initial LR
    val_trainer = Trainer(build_model("late", 4, new_length=2), train_set,
                          replace(config, lr_patience=0), val_set=test_set)
    val_trainer._step_plateau({"loss": 9.0, "val": {"rgb": 0.5, "flow": 0.5, "late": 0.75}})
    val_trainer._step_plateau({"loss": 0.1, "val": {"rgb": 0.9, "flow": 0.9, "late": 0.75}})
    assert val_trainer.plateau["drops"] == 1  # the fused output did not improve, whatever the loss did
    val_trainer.enter_phase(0)
    assert val_trainer.plateau["drops"] == 0


# ---- fusionkit reproduce: one table per paper, quick ----------------------------------------------
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("reproduce_data")


def _check_files(out, table, report):
    data = json.loads((out / f"{table.key}.json").read_text())
    md = (out / f"{table.key}.md").read_text()
    assert [r["name"] for r in data["rows"]] == [r.name for r in table.rows]
    for row, entry in zip(table.rows, data["rows"]):
        assert entry["paper"] == dict(row.paper)
        assert f"| {row.name} |" in md
        if row.buildable:
            assert entry["status"] == "ran", entry
            assert set(entry["ours"]) == {c.key for c in table.columns}
        else:
            assert entry["status"] == "not buildable" and entry["reason"] == row.reason
            assert f"**{row.name}**" in md
    assert len(data["claims"]) == len(table.claims) and all(c["paper"] is True for c in data["claims"])
    assert data["seconds"] > 0 and data["quick"] is True and "min in all" in md
    assert "## The paper's claims" in md
    puzzle = data["dataset"].split(":", 1)[1]
    assert f"On `{puzzle}` the label is" in md  # what the puzzle needs, to read the rows by
    import fusionkit

    if (Path(fusionkit.__file__).resolve().parents[1] / ".git").exists():  # the commit the numbers came from
        assert set(data["code"]) == {"commit", "uncommitted"} and len(data["code"]["commit"]) == 40
    else:
        assert data["code"] == {}
    return data


@pytest.mark.parametrize("paper, number, puzzle", [("feichtenhofer2016", 4, "order"), ("cmmp", 1, "order"), ("ccs", 3, "conjunction"),
                                                   ("cma", 1, "registration")])
def test_reproduce_one_table_of_each_other_paper(paper, number, puzzle, data_dir, tmp_path):
    table = get_table(paper, number)
    report = reproduce(paper, number, f"puzzles:{puzzle}", seeds=(0,), quick=True, data_dir=data_dir,
                       out_dir=tmp_path, progress=False)
    data = _check_files(tmp_path, table, report)
    if paper == "cma":  # the iteration rows: one run of 3 iterations, read at the end of each
        rows_by_name = {r["name"]: r for r in data["rows"]}
        assert [rows_by_name[n].get("at_iteration") for n in "123"] == [1, 2, 3]
        assert rows_by_name["1"]["run"] == "trained" and rows_by_name["2"]["run"] == "shared with '1'"
        assert rows_by_name["1"]["ours"]["Kinetics RGB top-5"] is None  # 4 classes: no top-5
        assert rows_by_name["0"]["outputs"]["Kinetics two-stream top-1"] == "late"
    if paper == "ccs":
        assert {r["name"]: r["outputs"]["UCF101 RGB+Flow"] for r in data["rows"][:4]} == {
            "TSN / Baseline": "ccs", "TSN / CB": "ccs-S", "TSN / CS": "ccs-S", "TSN / All": "ccs-S"}


def test_a_row_the_backbone_cannot_build_is_reported_not_faked(data_dir, tmp_path):
    report = reproduce("feichtenhofer2016", 2, "puzzles:registration", seeds=(0,), quick=True, data_dir=data_dir,
                       out_dir=None, progress=False)
    rows_by_name = {r["name"]: r for r in report["rows"]}
    assert rows_by_name["ReLU2"]["status"] == "not buildable on backbone tiny"
    assert "has no ReLU2" in rows_by_name["ReLU2"]["reason"]
    assert rows_by_name["ReLU3"]["status"] == "ran"
    claim = next(c for c in report["claims"] if c["text"].startswith("Multiple fusions"))
    assert claim["holds"] is None  # its row is not built: not checked
