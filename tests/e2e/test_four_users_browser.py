"""Browser: the four-users lesson from the Train page runs to the end; its chart shows every user's curve
and the reference ceilings as lines.

Same harness as test_browser.py (Debian's chromium, a real `streamlit run app.py`, real child processes).
"""

from __future__ import annotations

import time

import pytest

from core.jobs import JobManager
from core.runs import FINAL_STATES
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

        jm, t0, states = JobManager(runs), time.time(), {}
        while time.time() - t0 < 900:  # three 1200-step runs on a shared 2-core machine
            states = {r["label"]: r["state"] for r in jm.list()}
            if len(states) == 3 and set(states.values()) <= set(FINAL_STATES):
                break
            page.wait_for_timeout(1000)
        assert states == {"traditional-s0": "succeeded", "vpl-s0": "succeeded", "personal-s0": "succeeded"}, states
        final = {r["label"]: r["run_id"] for r in jm.list()}
        last = evaluations(runs, final["personal-s0"])

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
        page.screenshot(path=str(SHOTS / "train-four-users.png"), full_page=True)


def evaluations(runs, run_id: str) -> int:
    """Evaluations the run recorded (the points each of its curves has once fully drawn)."""
    from core.runs import RunDir

    records, _ = RunDir(runs / run_id).metrics()
    return sum(1 for r in records if isinstance(r.get("step"), int | float))
