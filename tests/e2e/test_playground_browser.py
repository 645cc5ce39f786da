"""Browser: the Playground in Chromium. A teacher's simulated student draws its curve; a visitor whose taste
no training user has is placed, then orders every answer of new questions and sees both models' scores."""

from __future__ import annotations

import numpy as np
import pytest

from core.serving.run_reward import RunRewardModel, ask_pairs
from core.serving.student import ranking_hits, run_questions
from core.users.tastes import user_scores
from tests.conftest import LESSON_IDS
from tests.e2e.test_browser import SHOTS, app_server, browser_page

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
VISITOR = np.asarray([[0.8, 0.2, 0.0, 0.0]])  # mostly helpfulness: neither of the lesson's one-hot users
CURVE_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(g => (g.data || [])
    .filter(t => /^(personal|traditional)/.test(t.name || '')).map(t => Array.from(t.y || []))).find(d => d.length)"""

BON_JS = """() => { const g = Array.from(document.querySelectorAll('.js-plotly-plot'))
    .find(g => (g.data || []).some(t => t.name === 'oracle'));
    return g ? Object.fromEntries(g.data.filter(t => t.yaxis !== 'y2').map(t => [t.name, Array.from(t.y || [])]))
        : undefined; }"""


def settle(page) -> None:
    """Wait until the script run triggered by the last click has finished (as Streamlit's own e2e tests do)."""
    page.wait_for_timeout(300)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=120_000)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, lesson_runs_root, cache_root):
    """One app server over the lesson runs for this module's tests; each test opens its own browser session."""
    with app_server(tmp_path_factory.mktemp("playground-server"), lesson_runs_root, cache_root) as url:
        yield url


def test_simulated_student_draws_its_curve(app_url):
    rid = LESSON_IDS["vpl-adaptive"]
    SHOTS.mkdir(exist_ok=True)
    with browser_page() as page:
        url = app_url
        page.goto(f"{url}/playground?run={rid}&k=8", wait_until="domcontentloaded")
        page.locator(".st-key-pg_mode").get_by_text("Simulated student").click(timeout=120_000)
        page.wait_for_function(f"() => ({CURVE_JS})() !== undefined", timeout=180_000)
        curves = page.evaluate(CURVE_JS)
        assert len(curves) == 2 and all(len(y) == 5 and all(0 <= v <= 1 for v in y) for y in curves), curves
        assert "mode=student" in page.url
        assert page.get_by_text("no run trained on", exact=False).count() >= 1
        page.screenshot(path=str(SHOTS / "playground-student.png"), full_page=True)
        # best of N: the picks of each rule and the curve of the student's true score against N
        page.wait_for_function(f"() => ({BON_JS})() !== undefined", timeout=180_000)
        settle(page)  # the run that drew it has ended: its table stands too
        lines = page.evaluate(BON_JS)
        assert set(lines) == {"oracle", "personal", "traditional", "random"}, lines
        assert all(len(y) == 7 for y in lines.values())
        assert all(o >= p - 1e-9 for o, p in zip(lines["oracle"], lines["personal"], strict=True))
        page.get_by_text("oracle (the student's own best)", exact=False).first.wait_for(timeout=60_000)
        page.get_by_text("of the gain the student's own best", exact=False).first.wait_for(timeout=60_000)
        page.get_by_text("4. Best of N", exact=False).first.scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / "playground-best-of-n.png"), full_page=True)


def test_a_visitor_is_placed_and_predicted_on_all_pairs(app_url, lesson_runs_root):
    rid = LESSON_IDS["vpl-adaptive"]
    rm = RunRewardModel.from_run(lesson_runs_root / rid, device="cpu")
    btl = RunRewardModel.from_run(lesson_runs_root / LESSON_IDS["traditional"], device="cpu")
    table = rm.table()
    s = user_scores(table, VISITOR)[0]
    asked = ask_pairs(table, rm.W, 8, how="random", seed=0)
    train_q, _ = run_questions(rm)
    nxt = ask_pairs(table, rm.W, 16, how="random", seed=1,
                    exclude=sorted({q for q, _, _ in asked} | {int(q) for q in train_q}))
    demos = [(table.prompts[q], *((table.responses[q][i], table.responses[q][j]) if s[q, i] >= s[q, j]
                                  else (table.responses[q][j], table.responses[q][i]))) for q, i, j in asked]
    me = rm.infer_user(demos)
    SHOTS.mkdir(exist_ok=True)
    with browser_page() as page:
        url = app_url
        page.goto(f"{url}/playground?run={rid}&k=8&how=random", wait_until="domcontentloaded")
        for n, (q, i, j) in enumerate(asked):
            settle(page)
            page.get_by_text(f"Question {n + 1}.", exact=False).first.wait_for(timeout=120_000)
            page.locator(".st-key-pg_a button" if s[q, i] >= s[q, j] else ".st-key-pg_b button").click()
        page.get_by_text("2. Predict me").first.wait_for(timeout=120_000)  # all 8 answers are in
        placed = page.locator("[data-testid='stMarkdownContainer']",
                              has_text="Nearest simulated user:").first.inner_text()
        assert "user 0 " in placed and "posterior sd" in placed, placed  # the helpfulness user, with the spread
        page.wait_for_function("() => Array.from(document.querySelectorAll('.js-plotly-plot'))"
                               ".some(g => (g.data || []).some(t => t.name === 'you'))", timeout=120_000)
        hits = trad = 0
        for n, (q, _, _) in enumerate(nxt[:2]):
            settle(page)
            page.get_by_text(f"Question {n + 1}.", exact=False).first.wait_for(timeout=120_000)
            order = sorted(range(table.n_completions), key=lambda c, q=q: (-s[q, c], c))
            for c in order[:-1]:  # the best of the remaining answers, until one is left
                settle(page)
                page.locator(f".st-key-pg_r{c} button").click()
            hits += ranking_hits(rm.score(table.prompts[q], table.responses[q], user=me), order)[0]
            trad += ranking_hits(btl.score(table.prompts[q], table.responses[q]), order)[0]
            total = 6 * (n + 1)
            line = page.locator("[data-testid='stMarkdownContainer']",
                                has_text=f"Personal model: {hits}/{total} pairs").first
            line.wait_for(timeout=120_000)
            assert f"Traditional model: {trad}/{total}" in line.inner_text(), line.inner_text()
        assert hits > trad, (hits, trad)  # the same 12 pairs: reading the visitor beats averaging users
        page.screenshot(path=str(SHOTS / "playground.png"), full_page=True)
        # a link to /home lands on Home (it used to open Streamlit's "Page not found" dialog)
        page.goto(f"{url}/home", wait_until="domcontentloaded")
        page.get_by_role("heading", name="PrefLens").first.wait_for(timeout=60_000)
        page.wait_for_timeout(1500)
        assert page.get_by_text("Page not found").count() == 0
