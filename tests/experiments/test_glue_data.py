"""GLUE task table and local-file readers: GLUE's TSV quirks, CSV/JSON, and errors that name the problem."""

from __future__ import annotations

import json
import os

import pytest
from helpers import REPO_ROOT

from hf_critical.experiments.glue import GLUE_TASKS, get_glue_task, load_glue_files, read_glue_file


def write(path, text: str, encoding: str = "utf-8"):
    path.write_text(text, encoding=encoding)
    return path


# ---- the task table ---------------------------------------------------------------------------------


def test_the_nine_tasks_have_glue_columns_and_labels():
    expected = {
        "cola": (("sentence",), ("unacceptable", "acceptable")),
        "sst2": (("sentence",), ("negative", "positive")),
        "mrpc": (("sentence1", "sentence2"), ("not_equivalent", "equivalent")),
        "qqp": (("question1", "question2"), ("not_duplicate", "duplicate")),
        "stsb": (("sentence1", "sentence2"), ()),
        "mnli": (("premise", "hypothesis"), ("entailment", "neutral", "contradiction")),
        "qnli": (("question", "sentence"), ("entailment", "not_entailment")),
        "rte": (("sentence1", "sentence2"), ("entailment", "not_entailment")),
        "wnli": (("sentence1", "sentence2"), ("not_entailment", "entailment")),
    }
    assert {name: (t.text_fields, t.label_names) for name, t in GLUE_TASKS.items()} == expected
    assert GLUE_TASKS["mnli"].validation_split == "validation_matched"
    assert GLUE_TASKS["stsb"].is_regression and GLUE_TASKS["stsb"].num_labels == 1
    assert get_glue_task("SST-2") is GLUE_TASKS["sst2"]


def test_unknown_task_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"`task_name` must be one of .*'sst2'.*got 'sst3'"):
        get_glue_task("sst3")


# ---- GLUE's own TSV files ------------------------------------------------------------------------


def test_sst2_tsv_with_header_and_trailing_spaces(tmp_path):
    path = write(tmp_path / "train.tsv", 'sentence\tlabel\nhide new secretions \t0\nit \'s a "charming" film \t1\n')
    data = read_glue_file(path, "sst2")
    assert data.column_names == ["sentence", "label", "idx"]
    assert data["sentence"] == ["hide new secretions ", 'it \'s a "charming" film ']  # quotes are text (QUOTE_NONE)
    assert data["label"] == [0, 1]
    assert data.features["label"].names == ["negative", "positive"]


def test_cola_tsv_without_header(tmp_path):
    path = write(tmp_path / "train.tsv", "gj04\t1\t\tOur friends won't buy this.\ngj04\t0\t*\tThe more we study verbs.\n")
    data = read_glue_file(path, "cola")
    assert data["sentence"] == ["Our friends won't buy this.", "The more we study verbs."]
    assert data["label"] == [1, 0]
    # the same task from a file that has a header
    with_header = write(tmp_path / "h.tsv", "sentence\tlabel\nA sentence.\t1\n")
    assert read_glue_file(with_header, "cola")["label"] == [1]


def test_mrpc_tsv_with_bom_and_msr_column_names(tmp_path):
    text = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t702876\t702977\tAmrozi accused his brother.\tHe accused his brother.\n"
    data = read_glue_file(write(tmp_path / "dev.tsv", text), "mrpc")
    assert data.column_names == ["sentence1", "sentence2", "label", "idx"]
    assert data[0] == {"sentence1": "Amrozi accused his brother.", "sentence2": "He accused his brother.", "label": 1, "idx": 0}


def test_rte_text_labels_become_indices(tmp_path):
    text = "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tnot_entailment\n1\tC.\tD.\tentailment\n"
    assert read_glue_file(write(tmp_path / "rte.tsv", text), "rte")["label"] == [1, 0]


def test_mnli_qqp_stsb_layouts(tmp_path):
    mnli = (
        "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
        "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
        "0\t1\t1e\tgov\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tThe premise.\tThe hypothesis.\tneutral\tneutral\n"
    )
    data = read_glue_file(write(tmp_path / "dev_matched.tsv", mnli), "mnli")
    assert data[0]["premise"] == "The premise." and data[0]["hypothesis"] == "The hypothesis." and data[0]["label"] == 1

    qqp = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n7\t1\t2\tHow?\tWhy?\t1\n"
    assert read_glue_file(write(tmp_path / "qqp.tsv", qqp), "qqp")[0]["question2"] == "Why?"

    stsb = (
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane.\tAn air plane.\t5.000\n"
        "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man.\tA woman.\t0.8\n"
    )
    data = read_glue_file(write(tmp_path / "stsb.tsv", stsb), "stsb")
    assert data["label"] == pytest.approx([5.0, 0.8])
    assert data.features["label"].dtype == "float32"


# ---- CSV and JSON --------------------------------------------------------------------------------


def test_csv_and_json_files(tmp_path):
    csv_path = write(tmp_path / "qnli.csv", 'question,sentence,label\n"What, now?",It is so.,entailment\nWho?,Me.,1\n')
    data = read_glue_file(csv_path, "qnli")
    assert data["question"] == ["What, now?", "Who?"] and data["label"] == [0, 1]

    rows = [{"sentence1": "a", "sentence2": "b", "label": 0}, {"sentence1": "c", "sentence2": "d", "label": "entailment"}]
    lines = write(tmp_path / "wnli.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    assert read_glue_file(lines, "wnli")["label"] == [0, 1]
    listed = write(tmp_path / "wnli.json", json.dumps(rows))
    assert read_glue_file(listed, "wnli")["sentence2"] == ["b", "d"]


def test_load_glue_files_skips_missing_splits(tmp_path):
    path = write(tmp_path / "train.tsv", "sentence\tlabel\nok\t1\n")
    data = load_glue_files("sst2", {"train": path, "validation": None})
    assert list(data) == ["train"]


# ---- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, text, task, message",
    [
        ("empty.tsv", "", "sst2", r"empty\.tsv: the file is empty"),
        ("blank.tsv", "\n\n", "sst2", r"blank\.tsv: the file is empty"),
        ("header.tsv", "sentence\tlabel\n", "sst2", r"header\.tsv: no data rows"),
        ("cols.tsv", "text\tlabel\nhello\t1\n", "sst2", r"cols\.tsv: missing column\(s\) \['sentence'\].*found \['text', 'label'\]"),
        ("mrpc.tsv", "Quality\t#1 String\nok\t1\n", "mrpc", r"missing column\(s\) \['sentence2'\].*'#2 String'"),
        ("lab.tsv", "sentence\tlabel\nfine\t1\nbad\t2\n", "sst2", r"lab\.tsv: line 3: label 2 is not in the sst2 label set"),
        ("name.tsv", "sentence\tlabel\nfine\tpositive\nbad\tgreat\n", "sst2", r"line 3: label 'great' is not in"),
        ("rte.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tneutral\n", "rte", r"label 'neutral' is not in the rte"),
        ("sts.tsv", "sentence1\tsentence2\tscore\na\tb\t5.5\n", "stsb", r"line 2: label '5\.5' is outside the STS-B range"),
        ("sts2.tsv", "sentence1\tsentence2\tscore\na\tb\thigh\n", "stsb", r"label 'high' is not a number"),
        ("ragged.tsv", "sentence\tlabel\nfine\t1\nextra\tfield\t1\n", "sst2", r"ragged\.tsv: line 3 has 3 tab-separated fields"),
        ("nulls.jsonl", '{"sentence": null, "label": 1}\n', "sst2", r"line 1: column 'sentence' must be text, got None"),
        ("bad.jsonl", '{"sentence": "a", "label": 1}\n{oops\n', "sst2", r"bad\.jsonl: line 2 is not valid JSON"),
        ("data.txt", "sentence\tlabel\n", "sst2", r"unsupported file type '\.txt'"),
    ],
)
def test_bad_files_raise_value_errors_naming_the_problem(tmp_path, name, text, task, message):
    path = write(tmp_path / name, text)
    with pytest.raises(ValueError, match=message):
        read_glue_file(path, task)


def test_missing_file_and_no_files(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.tsv: no such file"):
        read_glue_file(tmp_path / "nope.tsv", "sst2")
    with pytest.raises(ValueError, match="no data files given"):
        load_glue_files("sst2", {"train": None})


SHARED_DATA = os.path.join(REPO_ROOT, "..", "shared", "data")


@pytest.mark.parametrize("task, header", [("sst2", True), ("cola", False), ("mrpc", True), ("rte", True)])
def test_the_project_glue_dev_files_load_as_they_are(task, header):
    """../shared/data's GLUE TSVs (CoLA without a header, MRPC with a BOM): one row per line."""
    path = os.path.join(SHARED_DATA, task, "dev.tsv")
    if not os.path.isfile(path):
        pytest.skip(f"{path} is not on this machine")
    with open(path, encoding="utf-8-sig") as f:
        lines = sum(1 for line in f if line.strip())
    data = read_glue_file(path, task)
    assert len(data) == lines - header and set(data["label"]) == {0, 1}
