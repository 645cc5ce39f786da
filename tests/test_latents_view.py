"""core.serving.latents_view: the arrays behind the Latent page (weights per point, people rows, file discovery)."""

from __future__ import annotations

import numpy as np
import pytest

from core.serving import latents_view as lv
from core.users.tastes import preset


def _people_file(path, weights, names, kinds, R=3, L=5, accuracy=None, seed=0):
    P = len(weights)
    rng = np.random.default_rng(seed)
    np.savez(path, mu=rng.normal(size=(P * R, L)).astype(np.float32), person=np.repeat(np.arange(P), R),
             weights=np.asarray(weights, float), names=np.array(names), kinds=np.array(kinds),
             accuracy=np.asarray(accuracy if accuracy is not None else np.linspace(0.5, 0.9, P), float))


@pytest.fixture
def run(tmp_path):
    lat = tmp_path / "latents"
    lat.mkdir()
    for s in (0, 10, 20):
        np.savez(lat / f"step-{s:06d}.npz", mu=np.zeros((4, 5), np.float32), user=np.array([0, 0, 1, 1]),
                 question=np.arange(4))
    _people_file(lat / "people-trained-step-000020.npz", preset("two-opposed"), ["user 0", "user 1"],
                 ["trained", "trained"])
    _people_file(lat / "people-outside-step-000020.npz", [[0, 0, 1, 0], [0, 0, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4]],
                 ["instr only", "instr+truth", "dirichlet 0"], ["one-hot", "blend", "dirichlet"],
                 accuracy=[0.6, np.nan, 0.7], seed=1)
    (lat / "people-outside-step-000030.npz").write_bytes(b"torn")  # half-written: no trained file either
    (lat / "notes.txt").write_text("not a latents file")
    return tmp_path


def test_weights_per_probe_point_are_the_users_weights():
    W = lv.run_weights({"users": "cluster", "user_seed": 3})
    assert np.allclose(W, preset("cluster", seed=3))  # the same users core.users.tastes.load_users builds
    user = np.array([0, 99, 5, 5, 49])
    assert np.allclose(lv.probe_weights(user, W), W[user])
    custom = lv.run_weights({"users": [[0.7, 0.1, 0.1, 0.1], [0, 0, 0, 1]]})
    assert np.allclose(lv.probe_weights(np.array([1, 0]), custom), [[0, 0, 0, 1], [0.7, 0.1, 0.1, 0.1]])
    assert lv.probe_weights(np.array([0, 2]), lv.run_weights({"users": "two-opposed"})) is None  # user 2 unknown
    assert lv.run_weights({}) is None and lv.run_weights(None) is None and lv.run_weights({"users": "nobody"}) is None


def test_people_rows_carry_their_own_weights_names_and_accuracy(run):
    assert list(lv.latent_files(run)) == [0, 10, 20]
    pf = lv.people_files(run)
    assert list(pf) == [20, 30] and list(pf[20]) == ["trained", "outside"]
    ppl = lv.load_people(pf[20], 20)
    assert len(ppl) == (2 + 3) * 3 and ppl.n_people == 5 and ppl.skipped == 0 and ppl.mu.shape == (15, 5)
    assert list(ppl.source) == ["trained"] * 6 + ["outside"] * 9
    with np.load(run / "latents" / "people-outside-step-000020.npz") as z:
        out = ppl.source == "outside"
        assert np.allclose(ppl.mu[out], z["mu"])
        assert np.allclose(ppl.weights[out], z["weights"][z["person"]])  # each reading: its person's weights
    assert list(ppl.name[out][::3]) == ["instr only", "instr+truth", "dirichlet 0"]
    assert np.allclose(ppl.weights[:6], np.repeat(preset("two-opposed"), 3, axis=0))
    assert np.isnan(ppl.accuracy[out][3:6]).all() and np.allclose(ppl.accuracy[out][6:], 0.7)
    hover = lv.people_hover(ppl)
    assert "instr+truth (blend)" in hover[9] and "instr 0.50" in hover[9] and "accuracy on all test pairs n/a" in hover[9]
    assert lv.weights_text([1, 0, 0, 0]) == "help 1.00 · hon 0.00 · instr 0.00 · truth 0.00"


def test_runs_without_people_or_with_unreadable_files_give_none(run, tmp_path):
    assert lv.load_people(lv.people_files(run)[30], 30) is None  # only a torn file at that step
    old = tmp_path / "old"
    (old / "latents").mkdir(parents=True)
    np.savez(old / "latents" / "step-000010.npz", mu=np.zeros((2, 3)), user=np.array([0, 1]), question=np.arange(2))
    assert lv.people_files(old) == {} and lv.load_people(None) is None and lv.load_people({}) is None
    assert lv.people_files(tmp_path / "missing") == {} and lv.latent_files(tmp_path / "missing") == {}
