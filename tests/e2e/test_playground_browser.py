"""Browser: become an honesty-only visitor on the Playground, get placed, and watch 'predict me' keep score."""

from __future__ import annotations

import numpy as np
import pytest

from core.reward import PersonalRewardModel, ask_pairs
from core.users import user_scores
from tests.conftest import LESSON_IDS
from tests.e2e.test_browser import SHOTS, app_server, browser_page

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
HONESTY = np.asarray([[0.0, 1.0, 0.0, 0.0]])


def settle(page) -> None:
    """Wait until the script run triggered by the last click has finished (as Streamlit's own e2e tests do)."""
    page.wait_for_timeout(300)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=120_000)


def test_playground_places_a_visitor_and_predicts_them(tmp_path, lesson_runs_root, cache_root):
    rid = LESSON_IDS["vpl-adaptive"]
    rm = PersonalRewardModel.from_run(lesson_runs_root / rid, device="cpu")
    table = rm.table()
    honest = user_scores(table, HONESTY)[0]
    asked = ask_pairs(table, rm.W, 8, how="random", seed=0)
    nxt = ask_pairs(table, rm.W, 16, how="random", seed=1, exclude=[q for q, _, _ in asked])
    SHOTS.mkdir(exist_ok=True)
    with app_server(tmp_path, lesson_runs_root, cache_root) as url, browser_page() as page:
        page.goto(f"{url}/playground?run={rid}&k=8&how=random", wait_until="domcontentloaded")
        for n, (q, i, j) in enumerate(asked):
            settle(page)
            page.get_by_text(f"Question {n + 1}.", exact=False).first.wait_for(timeout=120_000)
            page.locator(".st-key-pg_a button" if honest[q, i] > honest[q, j] else ".st-key-pg_b button").click()
        page.get_by_text("2. Predict me").first.wait_for(timeout=120_000)  # all 8 answers are in
        placed = page.locator("[data-testid='stMarkdownContainer']",
                              has_text="Nearest simulated user:").first.inner_text()
        assert "user 1 " in placed, placed  # the honesty user
        page.wait_for_function("() => Array.from(document.querySelectorAll('.js-plotly-plot'))"
                               ".some(g => (g.data || []).some(t => t.name === 'you'))", timeout=120_000)
        hits = 0
        for n, (q, i, j) in enumerate(nxt[:4]):
            # the page has moved on to this question (not the last one's stale prediction)
            settle(page)
            page.get_by_text(f"Question {n + 1}.", exact=False).first.wait_for(timeout=120_000)
            info = page.get_by_text("The model predicts you will pick", exact=False).first
            info.wait_for(timeout=120_000)
            predicted_a = "pick A" in info.inner_text()
            first = honest[q, i] > honest[q, j]
            hits += predicted_a == first
            page.locator(".st-key-pg_pa button" if first else ".st-key-pg_pb button").click()
            page.get_by_text(f"Personal model: {hits}/{n + 1}", exact=False).first.wait_for(timeout=120_000)
        assert hits >= 3
        page.screenshot(path=str(SHOTS / "playground.png"), full_page=True)
        # a link to /home lands on Home (it used to open Streamlit's "Page not found" dialog)
        page.goto(f"{url}/home", wait_until="domcontentloaded")
        page.get_by_role("heading", name="PrefLens").first.wait_for(timeout=60_000)
        page.wait_for_timeout(1500)
        assert page.get_by_text("Page not found").count() == 0
