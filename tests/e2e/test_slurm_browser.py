"""Browser: launch a run on Slurm from the Train page and watch it succeed there.

Separate from test_browser.py's lesson flow so that it can skip alone where no Slurm answers
(`sudo scripts/slurm-local.sh start`; .ci/run starts one and sets PREFLENS_REQUIRE_SLURM=1).
"""

from __future__ import annotations

import os
import time

import pytest

from core.common.runs import FINAL_STATES
from core.jobs import slurm
from core.jobs.manager import JobManager
from tests.e2e.test_browser import SHOTS, browser_page, server  # noqa: F401 - server is the fixture

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
STEPS = 6


@pytest.fixture
def slurm_partition():
    parts = slurm.partitions()
    if not parts:
        if os.environ.get("PREFLENS_REQUIRE_SLURM") == "1":
            pytest.fail("no Slurm answers, and PREFLENS_REQUIRE_SLURM=1 requires it")
        pytest.skip("no Slurm here: sinfo does not answer (sudo scripts/slurm-local.sh start)")
    return parts[0]


def test_launch_a_run_on_slurm_from_the_train_page(slurm_partition, server):  # noqa: F811
    url, runs = server
    SHOTS.mkdir(parents=True, exist_ok=True)
    with browser_page() as page:
        page.goto(url + "/train", wait_until="domcontentloaded")
        # the launcher choice appears only where sinfo answers; widgets are found by their keys
        page.locator(".st-key-launcher").get_by_text("Slurm", exact=True).click(timeout=90_000)
        page.locator(".st-key-slurm_partition").wait_for(timeout=30_000)
        steps = page.locator(".st-key-steps input")
        steps.fill(str(STEPS))
        steps.press("Enter")
        page.wait_for_function(f"() => document.querySelector('.st-key-steps input').value === '{STEPS}'")
        page.locator(".st-key-slurm_time input").fill("9")
        page.locator(".st-key-slurm_time input").press("Enter")
        # one Slurm job per run here (the grid, on by default, would be one job for both)
        grid_box = page.locator(".st-key-as_grid input[type=checkbox]")
        if grid_box.is_checked():
            page.locator(".st-key-as_grid label").click()
        page.wait_for_function("() => !document.querySelector('.st-key-as_grid input[type=checkbox]').checked")
        page.wait_for_timeout(1000)  # let the reruns for the edited inputs settle before launching
        page.locator(".st-key-launch button").click()

        jm, t0 = JobManager(runs), time.time()
        while time.time() - t0 < 240:
            listed = jm.list()
            if len(listed) == 2 and all(r["state"] in FINAL_STATES for r in listed):
                break
            page.wait_for_timeout(1000)
        listed = jm.list()
        assert {r["label"]: r["state"] for r in listed} == {"traditional-s0": "succeeded",
                                                             "vpl-adaptive-s0": "succeeded"}, listed
        assert all(r["launcher"] == "slurm" and r["job_id"] and r["slurm"]["time_min"] == 9 for r in listed)
        assert all((r.get("progress") or {}).get("done") == STEPS for r in listed)
        # and the page says so: the live fragment's state line for the runs it shows
        for label in ("traditional-s0", "vpl-adaptive-s0"):
            page.get_by_text(f"{label}: succeeded", exact=False).first.wait_for(timeout=60_000)
        page.screenshot(path=str(SHOTS / "train-slurm.png"), full_page=True)
