"""AppTest: the Latent page colours points by an aspect's weight and places people on the same t-SNE,
over a real short `personal` run on two-opposed (and a copy of it as an older run without people files)."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from core.serving.latents_view import people_files
from core.training.config import build_config
from core.training.launch import train
from tests.app.figures import array, figure, open_page

RID = "personal-20260101-000000-people"
OLD = "personal-20250101-000000-oldrun"


@pytest.fixture(scope="module")
def personal_run(tmp_path_factory, cache_root, small_corpus_embeddings):
    root = tmp_path_factory.mktemp("people-runs")
    train(build_config({"preset": "personal", "users": "two-opposed", "corpus_prompts": 400, "steps": 30,
                        "eval_every": 10, "cache_dir": cache_root}), root / RID, log=lambda m: None)
    shutil.copytree(root / RID, root / OLD)  # a run from before people were scored: no people files
    for p in (root / OLD / "latents").glob("people-*.npz"):
        p.unlink()
    with pytest.MonkeyPatch.context() as mp:  # the pages read the runs folder from the env
        mp.setenv("PREFLENS_RUNS_DIR", str(root))
        yield root


def _traces(fig):
    probe = [t for t in fig["data"] if "people" not in t["meta"]]
    people = {t["meta"]["people"]: t for t in fig["data"] if "people" in t["meta"]}
    return probe, people


def test_personal_run_writes_people_files_at_the_last_evaluation(personal_run):
    pf = people_files(personal_run / RID)
    assert list(pf) == [30] and set(pf[30]) == {"trained", "outside"}


def test_aspect_colouring_is_the_users_and_the_peoples_weights(personal_run):
    at = open_page("app_pages/latent.py", run=RID)
    assert not at.exception, at.exception
    assert at.checkbox(key="latent_people").value and not at.checkbox(key="latent_people").disabled
    at.radio(key="latent_colour").set_value("weight: helpfulness").run()
    assert not at.exception, at.exception
    fig = figure(at, "latent_tsne")
    probe, people = _traces(fig)
    assert len(probe) == 1 and set(people) == {"trained", "outside"}
    user, colour = array(probe[0]["customdata"]), array(probe[0]["marker"]["color"])
    with np.load(personal_run / RID / "latents" / "step-000030.npz") as z:
        assert sorted(user.tolist()) == sorted(z["user"].tolist())
    # two-opposed: user 0 wants helpfulness only, user 1 honesty only
    assert set(colour[user == 0].tolist()) == {1.0} and set(colour[user == 1].tolist()) == {0.0}
    layout = fig["layout"]["coloraxis"]
    assert layout["cmin"] == 0 and layout["cmax"] == 1
    with np.load(personal_run / RID / "latents" / "people-outside-step-000030.npz") as z:
        w, person, names, kinds, mu = z["weights"], z["person"], z["names"], z["kinds"], z["mu"]
    out = people["outside"]
    assert out["marker"]["symbol"] == "diamond" and out["marker"]["coloraxis"] == "coloraxis"
    assert len(array(out["x"])) == len(mu)
    assert np.allclose(array(out["marker"]["color"]), w[person, 0])  # people: their own weights
    assert f"{names[0]} ({kinds[0]})" in out["text"][0]
    n_probe, n_people = map(int, re.search(r"(\d+) probe queries \+ (\d+) people readings",
                                           fig["layout"]["title"]["text"]).groups())
    assert (n_probe, n_people) == (len(user), len(array(out["x"])) + len(array(people["trained"]["x"])))
    # honesty: the colours swap
    at.radio(key="latent_colour").set_value("weight: honesty").run()
    probe, people = _traces(figure(at, "latent_tsne"))
    user, colour = array(probe[0]["customdata"]), array(probe[0]["marker"]["color"])
    assert set(colour[user == 0].tolist()) == {0.0} and set(colour[user == 1].tolist()) == {1.0}
    assert np.allclose(array(people["outside"]["marker"]["color"]), w[person, 1])
    assert np.allclose(array(people["trained"]["marker"]["color"]), [0.0] * 3 + [1.0] * 3)
    assert any("perplexity" in m.value for m in at.markdown)


def test_user_colouring_gives_each_users_readings_its_colour_and_people_can_be_hidden(personal_run):
    at = open_page("app_pages/latent.py", run=RID)
    assert at.radio(key="latent_colour").value == "user"
    probe, people = _traces(figure(at, "latent_tsne"))
    colour_of = {t["meta"]["user"]: t["marker"]["color"] for t in probe}
    trained = people["trained"]
    assert trained["marker"]["color"] == [colour_of[int(p)] for p in array(trained["customdata"])]
    assert any("people read from their own choices" in c.value for c in at.caption)
    # an earlier step has no people: the page says where they are
    at.select_slider(key="latent_step").set_value(10).run()
    _, people = _traces(figure(at, "latent_tsne"))
    assert not people and any("People are scored at steps 30" in c.value for c in at.caption)
    at.select_slider(key="latent_step").set_value(30).run()
    at.checkbox(key="latent_people").uncheck().run()
    _, people = _traces(figure(at, "latent_tsne"))
    assert not people


def test_a_run_without_people_files_still_draws_and_says_so(personal_run):
    at = open_page("app_pages/latent.py", run=OLD)
    assert not at.exception, at.exception
    assert at.checkbox(key="latent_people").disabled
    assert any("no people files" in c.value for c in at.caption)
    at.radio(key="latent_colour").set_value("weight: helpfulness").run()
    probe, people = _traces(figure(at, "latent_tsne"))
    assert not people and len(probe) == 1
