"""Browser: the Personas page draws a human-ratings output folder's neighbour graph (real app server)."""

from __future__ import annotations

import pytest

from core.personas import humans
from tests.e2e.test_browser import SHOTS, app_server, browser_page

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GROUP_TRACES_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot'))
    .map(g => (g.data || []).filter(t => (t.mode || '').startsWith('markers')).map(t => t.name).join(','))"""


def test_personas_page_draws_the_humans_graph(tmp_path, cache_root):
    runs = tmp_path / "runs"
    out = runs / "humans" / "planted"
    csv = tmp_path / "ratings.csv"
    humans.planted_ratings(n_users=60, n_groups=4, n_items=80, per_user=30, seed=0).to_csv(csv, index=False)
    r = humans.read_ratings(csv, "user", "item", "rating", "group")
    s = humans.write_outputs(out, r, humans.analyse(r, permutations=200),
                             {"min_overlap": 5, "top_k": 5, "metric": "pearson", "seed": 0})
    SHOTS.mkdir(exist_ok=True)
    with app_server(tmp_path, runs, cache_root) as url, browser_page() as page:
        page.goto(f"{url}/personas?humans=humans/planted", wait_until="domcontentloaded")
        page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=120_000)
        page.get_by_role("tab", name="Results").click()
        page.wait_for_function(f"() => ({GROUP_TRACES_JS})().includes('g0,g1,g2,g3')", timeout=60_000)
        page.get_by_text(f"{s['within_mean']:.3f}", exact=True).first.wait_for(timeout=30_000)
        page.get_by_text(f"{s['between_mean']:.3f}", exact=True).first.wait_for(timeout=30_000)
        graph = page.locator(".js-plotly-plot", has_text="Mutual top-5 neighbours of 60 people").first
        graph.scroll_into_view_if_needed()
        assert graph.bounding_box()["height"] > 300  # drawn, not a hidden empty box
        page.screenshot(path=str(SHOTS / "personas-humans.png"), full_page=True)
