import copy
import json

import numpy as np
import pandas as pd
import pytest

from core.data import DataError, HubUnavailableError, load_binarized, load_ultrafeedback
from core.data.corpus import generate_rows


def _row(source="evol_instruct", list_shape=False):
    comps = []
    for k in range(4):
        ann = {a: {"Rating": str(1 + (k + i) % 5), "Rationale": "x"} for i, a in
               enumerate(("helpfulness", "honesty", "instruction_following", "truthfulness"))}
        if list_shape:
            ann = {a: [v] for a, v in ann.items()}
        comps.append({"model": f"m{k}", "response": f"answer {k}", "annotations": ann})
    return {"source": source, "instruction": "Say something.", "models": [], "completions": comps}


def test_valid_rows_of_both_annotation_shapes_load_to_the_same_numbers():
    a = load_ultrafeedback([_row(), _row()])
    b = load_ultrafeedback([_row(list_shape=True), _row()])
    assert len(a) == 2 and a.ratings.shape == (2, 4, 4)
    assert np.array_equal(a.ratings, b.ratings)
    assert a.ratings[0, 1].tolist() == [2, 3, 4, 5]  # completion 1: ratings 1+(1+i)%5
    assert a.responses[0][3] == "answer 3" and a.models[0][2] == "m2"


def test_na_is_missing_and_truthful_qa_is_dropped_and_counted():
    r = _row()
    r["completions"][2]["annotations"]["honesty"]["Rating"] = "N/A"
    t = load_ultrafeedback([r, _row(source="truthful_qa"), _row(source="false_qa")])
    assert len(t) == 2 and t.sources == ["evol_instruct", "false_qa"]
    assert np.isnan(t.ratings[0, 2, 1]) and not np.isnan(t.ratings[0, 2, 0])
    assert t.report["dropped_sources"] == {"truthful_qa": 1}
    assert len(load_ultrafeedback([_row(source="truthful_qa")], drop_sources=())) == 1


def _bad_rows():
    missing_field = _row()
    del missing_field["completions"][1]["annotations"]["truthfulness"]
    out_of_range = _row()
    out_of_range["completions"][3]["annotations"]["honesty"]["Rating"] = "7"
    three = _row()
    three["completions"] = three["completions"][:3]
    no_prompt = _row()
    del no_prompt["instruction"]
    word = _row()
    word["completions"][0]["annotations"]["helpfulness"]["Rating"] = "great"
    return [
        (missing_field, "completions[1].annotations.truthfulness", "missing"),
        (out_of_range, "completions[3].annotations.honesty.Rating", "outside 1..5"),
        (three, "completions", "expected 4, got 3"),
        (no_prompt, "instruction", "missing"),
        (word, "completions[0].annotations.helpfulness.Rating", "not a rating"),
    ]


@pytest.mark.parametrize("bad,field,problem", _bad_rows())
def test_each_kind_of_bad_row_names_the_row_and_field(bad, field, problem):
    with pytest.raises(DataError) as info:
        load_ultrafeedback([_row(), _row(), bad])
    err = info.value
    assert err.row == 2 and err.field == field
    assert f"row 2, field '{field}'" in str(err) and problem in str(err)


def test_lenient_loading_skips_and_counts_bad_rows():
    rows = [_row()] + [b for b, _, _ in _bad_rows()] + [_row()]
    t = load_ultrafeedback(rows, lenient=True)
    assert len(t) == 2
    assert t.report["skipped_total"] == 5 and t.report["rows_read"] == 7
    assert any("row 1" in e for e in t.report["skipped_examples"])


def test_files_jsonl_json_and_parquet_read_the_same_and_bad_json_names_the_row(tmp_path):
    rows = generate_rows(n_prompts=6, seed=1)
    jl = tmp_path / "c.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    js = tmp_path / "c.json"
    js.write_text(json.dumps(rows))
    pq = tmp_path / "c.parquet"
    pd.DataFrame(rows).to_parquet(pq)
    a, b, c = (load_ultrafeedback(p) for p in (jl, js, pq))
    assert len(a) == len(b) == len(c) == 6
    assert np.array_equal(a.ratings, b.ratings) and np.array_equal(a.ratings, c.ratings)
    assert a.prompts == c.prompts and a.responses == c.responses
    broken = tmp_path / "broken.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines[3] = lines[3][:40]  # a torn line
    broken.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"row 3, field '<row>': not JSON"):
        load_ultrafeedback(broken)
    assert len(load_ultrafeedback(broken, lenient=True)) == 5
    with pytest.raises(FileNotFoundError, match="No such data file"):
        load_ultrafeedback(tmp_path / "nope.jsonl")


def test_hub_id_fails_fast_offline_with_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match="local .jsonl"):
        load_ultrafeedback("openbmb/UltraFeedback")


def test_binarized_variant_reads_chat_transcripts(tmp_path):
    rows = [{"prompt": "p", "chosen": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "good"}],
             "rejected": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "bad"}]},
            {"prompt": "q", "chosen": "yes", "rejected": ""}]
    with pytest.raises(DataError, match="row 1, field 'rejected'"):
        load_binarized(rows)
    df = load_binarized(copy.deepcopy(rows), lenient=True)
    assert df.to_dict("records") == [{"prompt": "p", "chosen": "good", "rejected": "bad"}]
    assert df.attrs["skipped"] == 1
