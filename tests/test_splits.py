"""UCF-101 and HMDB-51 split files, written here in their exact official formats."""
from __future__ import annotations

from pathlib import Path

import pytest

from fusionkit.data.splits import (
    Split,
    SplitError,
    VideoRecord,
    load_hmdb51_split,
    load_split,
    load_ucf101_split,
    write_ucf101_split,
)

UCF_CLASSES = ["ApplyEyeMakeup", "ApplyLipstick", "Archery"]


def write_ucf101(folder: Path, classes=UCF_CLASSES, train=None, test=None, split: int = 1) -> Path:
    """ucfTrainTestlist files exactly as in UCF101TrainTestSplits-RecognitionTask.zip (CRLF)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classInd.txt").write_bytes("".join(f"{i} {c}\r\n" for i, c in enumerate(classes, 1)).encode())
    if train is None:
        train = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c02.avi 1",
                 "ApplyLipstick/v_ApplyLipstick_g09_c01.avi 2", "Archery/v_Archery_g10_c03.avi 3"]
    if test is None:
        test = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "ApplyLipstick/v_ApplyLipstick_g01_c01.avi",
                "Archery/v_Archery_g02_c04.avi"]
    (folder / f"trainlist0{split}.txt").write_bytes("".join(f"{line}\r\n" for line in train).encode())
    (folder / f"testlist0{split}.txt").write_bytes("".join(f"{line}\r\n" for line in test).encode())
    return folder


def write_hmdb51(folder: Path, files: dict[str, list[tuple[str, int]]], split: int = 1) -> Path:
    """testTrainMulti_7030_splits files as in test_train_splits.rar: '<video>.avi <tag> \\n'."""
    folder.mkdir(parents=True, exist_ok=True)
    for cls, lines in files.items():
        (folder / f"{cls}_test_split{split}.txt").write_bytes(
            "".join(f"{video} {tag} \n" for video, tag in lines).encode())
    return folder


HMDB = {
    "brush_hair": [("April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 1), ("April_09_brush_hair_u_nm_np1_ba_goo_1.avi", 2),
                   ("Aussie_Brush_Hair_II_brush_hair_u_nm_np1_fr_med_0.avi", 0)],
    "cartwheel": [("(Rad)Schlagen_cartwheel_f_cm_np1_le_med_0.avi", 2), ("Acrobacias_cartwheel_f_cm_np1_ri_med_0.avi", 1)],
    "wave": [("20060723sfjffbartsinger_wave_f_cm_np1_ba_med_0.avi", 1)],
    "catch": [("Ballfangen_catch_u_cm_np1_fr_goo_0.avi", 2)],
}


# --- UCF-101 ---------------------------------------------------------------------------------
def test_ucf101_official_format_is_read_with_0_based_labels(tmp_path):
    write_ucf101(tmp_path / "ucfTrainTestlist")
    split = load_ucf101_split(tmp_path)
    assert split.classes == UCF_CLASSES
    assert split.train == [
        VideoRecord("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0),
        VideoRecord("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c02.avi", 0),
        VideoRecord("ApplyLipstick/v_ApplyLipstick_g09_c01.avi", 1),
        VideoRecord("Archery/v_Archery_g10_c03.avi", 2),
    ]
    assert split.test == [
        VideoRecord("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", 0),
        VideoRecord("ApplyLipstick/v_ApplyLipstick_g01_c01.avi", 1),
        VideoRecord("Archery/v_Archery_g02_c04.avi", 2),
    ]
    assert split.train[0].video_id == "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01"
    assert not any("\r" in r.path for r in split.train + split.test)


def test_ucf101_files_directly_in_root_are_found_too(tmp_path):
    write_ucf101(tmp_path)
    assert load_ucf101_split(tmp_path).classes == UCF_CLASSES


def test_ucf101_subfolder_wins_over_files_in_root(tmp_path):
    write_ucf101(tmp_path, classes=["Root", "Files", "Only"], train=[], test=[])
    write_ucf101(tmp_path / "ucfTrainTestlist")
    assert load_ucf101_split(tmp_path).classes == UCF_CLASSES


def test_ucf101_explicit_annotation_folder(tmp_path):
    write_ucf101(tmp_path / "elsewhere")
    assert load_ucf101_split(tmp_path / "videos", annotations=tmp_path / "elsewhere").classes == UCF_CLASSES


def test_ucf101_other_splits_and_lf_line_endings(tmp_path):
    folder = write_ucf101(tmp_path / "ucfTrainTestlist", split=3)
    for name in ("classInd.txt", "trainlist03.txt", "testlist03.txt"):  # a copy re-saved with LF only
        (folder / name).write_bytes((folder / name).read_bytes().replace(b"\r\n", b"\n"))
    split = load_ucf101_split(tmp_path, split=3)
    assert len(split.train) == 4 and len(split.test) == 3
    with pytest.raises(FileNotFoundError, match="trainlist01.txt"):
        load_ucf101_split(tmp_path, split=1)
    with pytest.raises(ValueError, match="splits 1, 2 and 3"):
        load_ucf101_split(tmp_path, split=4)


def test_ucf101_tolerates_a_bom_blank_lines_and_backslashes(tmp_path):
    folder = write_ucf101(tmp_path, train=["ApplyLipstick\\v_ApplyLipstick_g09_c01.avi 2", ""])
    (folder / "classInd.txt").write_bytes(b"\xef\xbb\xbf" + (folder / "classInd.txt").read_bytes())
    split = load_ucf101_split(tmp_path)
    assert split.classes[0] == "ApplyEyeMakeup"
    assert split.train == [VideoRecord("ApplyLipstick/v_ApplyLipstick_g09_c01.avi", 1)]


def test_ucf101_missing_class_index_names_the_expected_path(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_ucf101_split(tmp_path)
    assert str(tmp_path / "ucfTrainTestlist" / "classInd.txt") in str(info.value)
    assert "annotations=" in str(info.value)


def test_ucf101_unknown_class_in_test_list_names_file_line_and_close_match(tmp_path):
    write_ucf101(tmp_path, test=["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "ApplyLipstik/v_ApplyLipstik_g01_c01.avi"])
    with pytest.raises(SplitError) as info:
        load_ucf101_split(tmp_path)
    message = str(info.value)
    assert f"{tmp_path / 'testlist01.txt'}:2:" in message
    assert "unknown class 'ApplyLipstik'" in message and "did you mean 'ApplyLipstick'?" in message


def test_ucf101_unknown_class_without_a_close_match_has_no_hint(tmp_path):
    write_ucf101(tmp_path, test=["Zzzzzz/v_Zzzzzz_g01_c01.avi"])
    with pytest.raises(SplitError, match="unknown class 'Zzzzzz'; the class list has 3 classes"):
        load_ucf101_split(tmp_path)


def test_ucf101_label_that_contradicts_the_folder_is_an_error(tmp_path):
    write_ucf101(tmp_path, train=["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1", "Archery/v_Archery_g10_c03.avi 2"])
    with pytest.raises(SplitError) as info:
        load_ucf101_split(tmp_path)
    message = str(info.value)
    assert f"{tmp_path / 'trainlist01.txt'}:2:" in message
    assert "label 2 is class 'ApplyLipstick' but the video sits in folder 'Archery'" in message


@pytest.mark.parametrize("line,match", [
    ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "expected '<Class>/<video>.avi <label>'"),
    ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1 extra", "expected '<Class>/<video>.avi <label>'"),
    ("v_ApplyEyeMakeup_g08_c01.avi 1", "has no '<Class>/' folder"),
    ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi one", "label 'one' is not a class index 1..3"),
    ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 4", "label '4' is not a class index 1..3"),
    ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 0", "label '0' is not a class index 1..3"),
])
def test_ucf101_malformed_train_lines_are_split_errors(tmp_path, line, match):
    write_ucf101(tmp_path, train=["ApplyLipstick/v_ApplyLipstick_g09_c01.avi 2", line])
    with pytest.raises(SplitError, match=match) as info:
        load_ucf101_split(tmp_path)
    assert "trainlist01.txt:2:" in str(info.value)


def test_ucf101_label_in_a_test_list_is_malformed(tmp_path):
    write_ucf101(tmp_path, test=["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1"])
    with pytest.raises(SplitError, match=r"testlist01.txt:1: expected '<Class>/<video>.avi', got"):
        load_ucf101_split(tmp_path)


@pytest.mark.parametrize("class_ind,match", [
    ("1 ApplyEyeMakeup\r\n3 ApplyLipstick\r\n", r"classInd.txt:2: class indices must run 1, 2, 3"),
    ("1 ApplyEyeMakeup\r\nApplyLipstick\r\n", r"classInd.txt:2: expected '<index> <ClassName>'"),
    ("1 Apply Eye Makeup\r\n", r"classInd.txt:1: expected '<index> <ClassName>'"),
])
def test_ucf101_malformed_class_index_is_a_split_error(tmp_path, class_ind, match):
    write_ucf101(tmp_path, train=[], test=[])
    (tmp_path / "classInd.txt").write_bytes(class_ind.encode())
    with pytest.raises(SplitError, match=match):
        load_ucf101_split(tmp_path)


def test_split_error_is_a_value_error():
    assert issubclass(SplitError, ValueError)


def test_write_ucf101_split_round_trips_in_the_official_format(tmp_path):
    samples = [("B/v_B_g01_c01.avi", 1), ("A/v_A_g02_c01.avi", 0), ("A/v_A_g01_c01.avi", 0)]
    write_ucf101_split(tmp_path, ["A", "B"], samples, [True, False, True], split=2)
    assert (tmp_path / "classInd.txt").read_bytes() == b"1 A\r\n2 B\r\n"
    assert (tmp_path / "trainlist02.txt").read_bytes() == b"A/v_A_g02_c01.avi 1\r\n"
    assert (tmp_path / "testlist02.txt").read_bytes() == b"B/v_B_g01_c01.avi\r\nA/v_A_g01_c01.avi\r\n"
    split = load_ucf101_split(tmp_path, split=2)
    assert split.train == [VideoRecord("A/v_A_g02_c01.avi", 0)]
    assert split.test == [VideoRecord("B/v_B_g01_c01.avi", 1), VideoRecord("A/v_A_g01_c01.avi", 0)]


# --- HMDB-51 ---------------------------------------------------------------------------------
def test_hmdb51_official_format_partitions_train_test_and_unused(tmp_path):
    write_hmdb51(tmp_path / "testTrainMulti_7030_splits", HMDB)
    split = load_hmdb51_split(tmp_path)
    assert split.classes == ["brush_hair", "cartwheel", "catch", "wave"]  # sorted by name
    assert split.train == [
        VideoRecord("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 0),
        VideoRecord("cartwheel/Acrobacias_cartwheel_f_cm_np1_ri_med_0.avi", 1),
        VideoRecord("wave/20060723sfjffbartsinger_wave_f_cm_np1_ba_med_0.avi", 3),
    ]
    assert split.test == [
        VideoRecord("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_1.avi", 0),
        VideoRecord("cartwheel/(Rad)Schlagen_cartwheel_f_cm_np1_le_med_0.avi", 1),
        VideoRecord("catch/Ballfangen_catch_u_cm_np1_fr_goo_0.avi", 2),
    ]
    everything = {r.path for r in split.train + split.test}
    assert "brush_hair/Aussie_Brush_Hair_II_brush_hair_u_nm_np1_fr_med_0.avi" not in everything  # tag 0: unused
    assert split.test[1].video_id == "cartwheel/(Rad)Schlagen_cartwheel_f_cm_np1_le_med_0"


def test_hmdb51_files_directly_in_root_and_other_splits(tmp_path):
    write_hmdb51(tmp_path, HMDB, split=2)
    split = load_hmdb51_split(tmp_path, split=2)
    assert split.classes == ["brush_hair", "cartwheel", "catch", "wave"] and len(split.train) == 3
    with pytest.raises(FileNotFoundError, match=r"no HMDB-51 split files '\*_test_split1.txt'"):
        load_hmdb51_split(tmp_path, split=1)


def test_hmdb51_other_splits_files_are_not_mixed_in(tmp_path):
    ann = write_hmdb51(tmp_path / "testTrainMulti_7030_splits", HMDB, split=1)
    write_hmdb51(ann, {"zzz_other": [("x.avi", 1)]}, split=2)
    assert "zzz_other" not in load_hmdb51_split(tmp_path).classes


def test_hmdb51_no_files_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_hmdb51_split(tmp_path)
    assert str(tmp_path) in str(info.value) and "test_train_splits.rar" in str(info.value)


@pytest.mark.parametrize("line", ["April_09_brush_hair_u_nm_np1_ba_goo_0.avi 3 \n", "April_09.avi train \n",
                                  "April_09.avi\n", "April_09.avi 1 2\n"])
def test_hmdb51_bad_tag_or_line_is_a_split_error(tmp_path, line):
    ann = write_hmdb51(tmp_path, {"brush_hair": [("ok.avi", 1)]})
    (ann / "brush_hair_test_split1.txt").write_bytes(b"ok.avi 1 \n" + line.encode())
    with pytest.raises(SplitError) as info:
        load_hmdb51_split(tmp_path)
    assert f"{ann / 'brush_hair_test_split1.txt'}:2: expected '<video>.avi <0|1|2>'" in str(info.value)


def test_hmdb51_explicit_annotation_folder(tmp_path):
    write_hmdb51(tmp_path / "splits", HMDB)
    assert len(load_hmdb51_split(tmp_path / "videos", annotations=tmp_path / "splits").classes) == 4


# --- both ------------------------------------------------------------------------------------
def test_missing_videos_lists_the_absent_ones(tmp_path):
    write_ucf101(tmp_path / "ucfTrainTestlist")
    split = load_ucf101_split(tmp_path)
    present = [split.train[0].path, split.test[2].path]
    for rel in present:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"video")
    (tmp_path / "ApplyLipstick" / "v_ApplyLipstick_g09_c01.avi").mkdir(parents=True)  # a folder is not a video
    missing = split.missing_videos(tmp_path)
    assert missing == [r.path for r in split.train + split.test if r.path not in present]
    assert Split(["A"]).missing_videos(tmp_path) == []


def test_load_split_dispatches_by_dataset_name(tmp_path):
    write_ucf101(tmp_path / "ucf" / "ucfTrainTestlist")
    write_hmdb51(tmp_path / "hmdb" / "testTrainMulti_7030_splits", HMDB)
    write_ucf101(tmp_path / "puzzle")  # make-puzzles writes the files into the root
    assert load_split("ucf101", tmp_path / "ucf").classes == UCF_CLASSES
    assert load_split("hmdb51", tmp_path / "hmdb").classes == sorted(HMDB)
    assert load_split("puzzles:motion", tmp_path / "puzzle") == load_ucf101_split(tmp_path / "puzzle")
    with pytest.raises(ValueError, match="unknown dataset 'kinetics'"):
        load_split("kinetics", tmp_path)


def test_load_split_on_a_rendered_puzzle(motion_puzzle):
    split = load_split("puzzles:motion", motion_puzzle)
    assert split.classes == ["MoveLeft", "MoveRight", "MoveUp", "MoveDown"]
    assert len(split.train) == len(split.test) == 8
    assert split.missing_videos(motion_puzzle) == []
