"""Browser: the four-users lesson from the Train page runs to the end as one grid job of three runs; its
chart shows every user's curve, the reference ceilings as lines, and the step an early-stopped run kept.

Same harness as test_browser.py (Debian's chromium, a real `streamlit run app.py`, real child processes).
"""

from __future__ import annotations

import time

import pytest

from core.common.runs import FINAL_STATES
from core.jobs.manager import JobManager
from tests.e2e.test_browser import SHOTS, app_server, browser_page

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# per drawn accuracy chart: the users of each run (meta.user set by the Train page), the dashed reference
# lines (layout shapes) and their annotation texts
CHART_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(g => ({
    users: (g.data || []).filter(t => t.meta && t.meta.user !== undefined)
                         .map(t => [t.meta.run_id, String(t.meta.user), (t.x || []).length]),
    notes: ((g.layout || {}).annotations || []).map(a => a.text || '')
}))"""


def test_four_users_lesson_runs_to_the_end_with_four_curves_and_reference_lines(tmp_path, cache_root,
                                                                                small_corpus_embeddings):

    runs = tmp_path / "runs"
    SHOTS.mkdir(exist_ok=True)
    with app_server(tmp_path, runs, cache_root) as url, browser_page() as page:
        page.goto(url + "/train", wait_until="domcontentloaded")
        page.get_by_role("button", name="Run the four-users lesson").click(timeout=90_000)

        # one grid job whose members are the three runs (<grid id>.<method>-s0, listed once it starts them);
        # a safety bound only: how long the lesson takes is bench/bench_lessons.py's business
        jm, t0, grids, states = JobManager(runs), time.time(), [], {}
        while time.time() - t0 < 1800:
            rows = jm.list()
            grids = [r for r in rows if r.get("members") is not None]
            states = {r["label"]: r["state"] for r in rows if r.get("grid")}
            if grids and grids[0]["state"] in FINAL_STATES and set(states.values()) <= set(FINAL_STATES):
                break
            page.wait_for_timeout(1000)
        assert len(grids) == 1 and grids[0]["kind"] == "grid", [(r["run_id"], r.get("kind")) for r in jm.list()]
        gid = grids[0]["run_id"]
        assert grids[0]["state"] == "succeeded", grids[0]
        assert states == {"traditional-s0": "succeeded", "vpl-s0": "succeeded", "personal-s0": "succeeded"}, states
        final = {r["label"]: r["run_id"] for r in jm.list() if r.get("grid") == gid}
        assert final["personal-s0"] == f"{gid}.personal-s0"
        # the personal run learned before its last step: it stopped early and kept its best evaluation
        early = jm.status(final["personal-s0"]).get("stopped_early")
        assert early and early["best_step"] < early["at_step"] < 1200, early
        last = evaluations(jm, final["personal-s0"])

        # the live fragment redraws from the runs' metrics: wait until the personal run's four users are
        # drawn to its last evaluation
        page.wait_for_function(
            """([rid, n]) => Array.from(document.querySelectorAll('.js-plotly-plot')).some(g =>
                (g.data || []).filter(t => t.meta && t.meta.run_id === rid && t.meta.user !== undefined
                                      && (t.x || []).length === n).length === 4)""",
            arg=[final["personal-s0"], last], timeout=90_000)
        charts = page.evaluate(CHART_JS)
        acc = next(c for c in charts if any(u[0] == final["personal-s0"] for u in c["users"]))
        for label in ("traditional-s0", "vpl-s0", "personal-s0"):
            drawn = sorted(u for rid, u, _ in acc["users"] if rid == final[label])
            assert drawn == ["0", "1", "2", "3"], (label, acc["users"])
        refs = [t for t in acc["notes"] if t.startswith(("global mean weights", "group mean weights",
                                                          "per-user probe"))]
        assert any(t.startswith("per-user probe") for t in refs), acc["notes"]
        assert any(t.startswith("group mean weights 1.00") for t in refs), acc["notes"]
        # the step it kept, marked on the chart with why it stopped
        kept = f"personal-s0: kept step {early['best_step']} (stopped at {early['at_step']}: validation loss"
        assert any(t.startswith(kept) for t in acc["notes"]), acc["notes"]
        page.screenshot(path=str(SHOTS / "train-four-users.png"), full_page=True)


def evaluations(jm: JobManager, run_id: str) -> int:
    """Evaluations the run recorded (the points each of its curves has once fully drawn): not the last
    record of a run that stopped early, which re-evaluates the kept step's model and is drawn as a marker."""
    records, _ = jm.run_dir(run_id).metrics()
    return sum(1 for r in records if isinstance(r.get("step"), int | float) and not r.get("kept_best"))
