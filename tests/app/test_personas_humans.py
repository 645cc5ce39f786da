"""AppTest: the Personas page opens a human-ratings output folder and shows its graph and group test
beside a persona run."""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core.personas import humans
from tests.app.figures import array, figure
from tests.app.test_personas_page import _make_run

PAGE = str(Path(__file__).resolve().parents[2] / "app_pages" / "personas.py")


def _humans_output(folder: Path, seed: int = 0) -> dict:
    csv = folder.parent / f"{folder.name}.csv"
    folder.parent.mkdir(parents=True, exist_ok=True)
    humans.planted_ratings(n_users=30, n_groups=3, n_items=60, per_user=30, seed=seed).to_csv(csv, index=False)
    r = humans.read_ratings(csv, "user", "item", "rating", "group")
    a = humans.analyse(r, permutations=200, top_k=4, seed=seed)
    return humans.write_outputs(folder, r, a, {"min_overlap": 5, "top_k": 4, "metric": "pearson", "seed": seed})


def _metric(at, label_start: str) -> str:
    found = [m for m in at.metric if m.label.startswith(label_start)]
    assert found, [m.label for m in at.metric]
    return found[0].value


def test_humans_folder_shows_graph_and_group_numbers_beside_a_persona_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFLENS_RUNS_DIR", str(tmp_path))
    _make_run(tmp_path, "personas-1", "scoring")
    s = _humans_output(tmp_path / "humans" / "planted")
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["humans"] = "humans/planted"
    at.run()
    assert not at.exception
    assert at.selectbox(key="humans_select").value == "humans/planted"
    assert _metric(at, "Within-group similarity") == f"{s['within_mean']:.3f}"
    assert _metric(at, "Between-group similarity") == f"{s['between_mean']:.3f}"
    assert _metric(at, "Permutation p") == f"{s['p_value']:.4f}" and float(_metric(at, "Permutation p")) < 0.01
    assert _metric(at, "People") == "30"

    fig = figure(at, "humans_graph")
    node_traces = [t for t in fig["data"] if t.get("mode", "").startswith("markers")]
    assert [t["name"] for t in node_traces] == ["g0", "g1", "g2"]  # one colour per group, named in the legend
    assert sum(len(array(t["x"])) for t in node_traces) == 30
    edge_x = array(fig["data"][0]["x"])
    assert len(edge_x) == 3 * s["graph_edges"]  # x0, x1, None per edge
    graph = json.loads((tmp_path / "humans" / "planted" / "graph.json").read_text())
    xs = {n["user"]: n["x"] for n in graph["nodes"]}
    g0 = node_traces[0]
    assert dict(zip(g0["text"], array(g0["x"]).tolist(), strict=True)) == {u: xs[u] for u in g0["text"]}

    compare = [d.value for d in at.dataframe if "within" in getattr(d.value, "columns", [])][0]
    assert list(compare.index) == ["personas · personas-1 (story groups)", "humans · humans/planted"]
    assert compare.loc["humans · humans/planted", "within"] == s["within_mean"]
    # the persona fixture: Ann & Bob (health) choose alike, Cy (music) opposes: within 1.0, between -1/3
    persona = compare.loc["personas · personas-1 (story groups)"]
    assert abs(persona["within"] - 1.0) < 1e-9 and abs(persona["between"] + 1 / 3) < 1e-9


def test_typed_folder_wins_and_a_bad_one_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFLENS_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert any("No humans output" in i.value for i in at.info)
    elsewhere = tmp_path / "elsewhere"
    s = _humans_output(elsewhere, seed=1)
    at.text_input(key="humans_path").set_value(str(elsewhere)).run()
    assert not at.exception
    assert _metric(at, "Within-group similarity") == f"{s['within_mean']:.3f}"
    assert figure(at, "humans_graph")["data"]
    at.text_input(key="humans_path").set_value(str(tmp_path)).run()
    assert any("not a humans output folder" in e.value and "summary.json" in e.value for e in at.error)
