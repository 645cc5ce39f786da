"""Best-of-N: what a reward model's pick is worth to a person, judged by that person's true taste.

    cands = generate_candidates(n_prompts=30, n_candidates=64, seed=0, avoid=run_texts(rm))
    res = best_of_n(rm, twin, people, cands)        # rm: a personal run, twin: its traditional twin (or None)
    res["people"][p]["share"]["personal"][i]        # person p's share of the oracle's gain at res["ns"][i]

Each person is read from ``n_demos`` of their own choices on the run's training questions (as
core.users.people reads them), then each rule picks one of the first N candidates of every question:

    personal     the highest reward under the person's reading (the mean over ``readings`` readings' picks)
    traditional  the highest user-blind reward of the twin
    random       any candidate: its expected utility is the mean of the N
    oracle       the highest true utility, w . levels

``twin_mix`` (0..1) leans the personal rule on the twin: it picks by (1 - twin_mix) z_personal + twin_mix z_twin,
each reward standardized per question. 0 is the personal model alone (the default), 1 the twin's own picks;
docs/results/best-of-n.md measures what a half costs and buys.

A pick is worth its true utility (rating units, 1..5) and, for N > 1, its share of the oracle's gain over
a random pick, summed over the questions: (U_pick - U_random) / (U_oracle - U_random). ``proxy`` is the
personal model's own reward of its pick, standardized per question over all the candidates: where it
keeps rising with N while the true utility does not, the model is being overoptimized.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from core.data.candidates import MAX_CANDIDATES
from core.data.table import PreferenceTable
from core.serving.run_reward import RewardModelError, RunRewardModel
from core.serving.student import _embedder, run_questions
from core.users.people import Person, build_people_set, pairs_ordered, reading_latents

NS = (1, 2, 4, 8, 16, 32, 64)
CHOICES = (1, 2, 4, 8, 16, 32, 64)
SAVED = "best_of_n.json"  # a run folder's best-of-N summary (``--save``)


def run_texts(rm) -> set[str]:
    """Every answer of a run's table: the candidates must not repeat one."""
    table = rm.table()
    return {r for rs in table.responses for r in rs}


def check_ns(ns: Sequence[int], n_candidates: int) -> list[int]:
    ns = [int(n) for n in ns]
    bad = [n for n in ns if not 1 <= n <= min(n_candidates, MAX_CANDIDATES)]
    if not ns or bad:
        raise RewardModelError(f"n: each N between 1 and {min(n_candidates, MAX_CANDIDATES)} (the candidates per "
                               f"question), got {bad or ns}")
    return sorted(set(ns))


@torch.no_grad()
def text_features(rm, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The run's features of ``texts``, (T, D), and the frozen ones z acts on where they differ."""
    frozen = rm.query_encoder is not None and getattr(rm.cfg, "z_features", "query") == "frozen"
    return rm._queries(texts), rm._frozen(texts) if frozen else None


def candidate_features(rm, cands: PreferenceTable) -> tuple[torch.Tensor, torch.Tensor | None]:
    """text_features of every candidate, (Q * N, D), question-major."""
    return text_features(rm, [cands.texts(q, c) for q in range(len(cands)) for c in range(cands.n_completions)])


@torch.no_grad()
def candidate_rewards(rm, cands: PreferenceTable, latents: torch.Tensor | None,
                      features: tuple | None = None) -> np.ndarray:
    """Rewards of every candidate: (Q, N) for a user-blind model, (P, Q, N) under P latents (P, L).
    ``features``: candidate_features(rm, cands), when already computed."""
    Q, N = len(cands), cands.n_completions
    q, z_emb = features or candidate_features(rm, cands)
    if latents is None:
        return rm.model.reward(q).float().cpu().numpy().reshape(Q, N)
    r = rm.model.reward_grid(q, latents, z_emb=z_emb).float().cpu().numpy()  # (P, Q * N)
    return r.reshape(len(latents), Q, N)


def people_set(table, people, demo_q, score_q, n_demos: int, readings: int, seed: int):
    """build_people_set, its errors (too few or too many choices for the run's questions) as RewardModelError."""
    try:
        return build_people_set(table.ratings, people, demo_q, score_q, n_demos=n_demos, n_readings=readings,
                                seed=seed)
    except ValueError as err:
        raise RewardModelError(f"demos: {err}") from None


def read_people(rm, people: list[Person], n_demos: int, readings: int, seed: int, *, all_pairs: bool = False):
    """Latent means (P * R, L) of each person read ``readings`` times from ``n_demos`` own choices on the
    run's training questions (person-major). ``all_pairs``: also the PeopleSet scoring every strict pair of
    the run's test questions, as (mu, pset); the readings do not depend on what is scored."""
    table = rm.table()
    train_q, test_q = run_questions(rm)
    pset = people_set(table, people, train_q, test_q if all_pairs else test_q[:1], n_demos, readings, seed)
    texts = [table.texts(q, c) for q in range(len(table)) for c in range(table.n_completions)]
    mu = reading_latents(rm.model, pset, _embedder(rm, texts, False))[0]
    return (mu, pset) if all_pairs else mu


def check_twin_mix(twin_mix: float, twin) -> float:
    twin_mix = float(twin_mix)
    if not 0.0 <= twin_mix <= 1.0:
        raise RewardModelError(f"twin_mix: a share between 0 and 1, got {twin_mix}")
    if twin_mix > 0 and twin is None:
        raise RewardModelError("twin_mix: leaning on the traditional twin needs one (give --twin)")
    return twin_mix


def standardized(r: np.ndarray) -> np.ndarray:
    """Rewards standardized along the last axis (a question's candidates, or all scored texts)."""
    return (r - r.mean(-1, keepdims=True)) / (r.std(-1, keepdims=True) + 1e-9)


@torch.no_grad()
def pairs_accuracy(rm, twin, people: list[Person], *, n_demos: int = 8, readings: int = 3, seed: int = 0,
                   twin_mix: float = 0.0) -> dict:
    """Each person's accuracy on all strict pairs of the run's test questions, read from ``n_demos`` own
    choices as best_of_n reads them, with the same ``twin_mix``; the twin's on the same pairs beside it.
    -> {"personal": (P,), "traditional": (P,) or None, "pairs": (P,)} (NaN: a person with no strict pair)."""
    twin_mix = check_twin_mix(twin_mix, twin)
    mu, pset = read_people(rm, people, n_demos, readings, seed, all_pairs=True)  # (P * R, L)
    table = rm.table()
    scored = [table.texts(int(t) // table.n_completions, int(t) % table.n_completions) for t in pset.text_ids]
    q, z_emb = text_features(rm, scored)
    r_me = rm.model.reward_grid(q, mu, z_emb=z_emb).float().cpu().numpy().reshape(len(people), readings, -1)
    r_tr = None if twin is None else twin.model.reward(text_features(twin, scored)[0]).float().cpu().numpy()  # (T,)
    if twin_mix > 0:
        r_me = (1 - twin_mix) * standardized(r_me) + twin_mix * standardized(r_tr)[None, None]
    P = len(people)
    return {"personal": pairs_ordered(r_me, pset.pairs),
            "traditional": None if r_tr is None else pairs_ordered(np.broadcast_to(r_tr, (P, 1, len(r_tr))), pset.pairs),
            "pairs": np.array([len(pr) for pr in pset.pairs])}


def _share(pick: np.ndarray, rand: np.ndarray, best: np.ndarray) -> float:
    """Share of the oracle's gain over random, summed over questions (NaN where the oracle gains nothing)."""
    gain = float((best - rand).sum())
    return float((pick - rand).sum() / gain) if gain > 1e-12 else float("nan")


def best_of_n(rm, twin, people: list[Person], cands: PreferenceTable, *, ns: Sequence[int] = NS,
              n_demos: int = 8, readings: int = 3, seed: int = 0, scored: dict | None = None,
              twin_mix: float = 0.0) -> dict:
    """Each person's utility and share of the oracle's gain for every rule at every N (see the module
    docstring). ``twin``: the traditional run on the same data, or None (its rule is then left out).
    ``scored``: {"features": candidate_features(rm, cands), "twin": the twin's (Q, N) rewards}, when already
    computed for these candidates (choices_curve reads the same candidates many times)."""
    if not rm.conditional:
        raise RewardModelError("run: best-of-N reads a person, so it needs a conditional run (vpl* or personal); "
                               "give a traditional run as the twin")
    if twin is not None and twin.conditional:
        raise RewardModelError("twin: the traditional twin must be a traditional (BTL) run")
    ns = check_ns(ns, cands.n_completions)
    twin_mix = check_twin_mix(twin_mix, twin)
    P, R = len(people), readings
    mu = read_people(rm, people, n_demos, readings, seed)  # (P * R, L)
    scored = scored or {}
    r_me = candidate_rewards(rm, cands, mu, scored.get("features")).reshape(P, R, len(cands), -1)  # (P, R, Q, N)
    r_tr = scored.get("twin") if "twin" in scored else (
        candidate_rewards(twin, cands, None) if twin is not None else None)  # (Q, N)
    if twin_mix > 0:  # the rule's own scores; the proxy below stays the personal model's
        pick_by = (1 - twin_mix) * standardized(r_me) + twin_mix * standardized(r_tr)[None, None]
    else:
        pick_by = r_me
    levels = np.nan_to_num(cands.ratings.astype(np.float64))  # (Q, N, 4)
    W = np.stack([p.weights for p in people])  # (P, 4)
    U = np.einsum("qna,pa->pqn", levels, W)  # (P, Q, N) true utility, rating units
    z = standardized(r_me)  # the proxy: personal's own reward of a pick, in a question's standard units
    out = {"ns": ns, "n_demos": n_demos, "readings": readings, "questions": len(cands), "twin_mix": twin_mix,
           "people": []}
    for p, person in enumerate(people):
        row = {**person.to_json(), "utility": {k: [] for k in ("personal", "traditional", "random", "oracle")},
               "share": {"personal": [], "traditional": []}, "proxy": []}
        for n in ns:
            u = U[p, :, :n]  # (Q, n)
            rand, best = u.mean(-1), u.max(-1)
            pick = np.take_along_axis(u[None], pick_by[p, :, :, :n].argmax(-1)[..., None], -1)[..., 0]  # (R, Q)
            row["utility"]["personal"].append(float(pick.mean()))
            row["utility"]["random"].append(float(rand.mean()))
            row["utility"]["oracle"].append(float(best.mean()))
            row["share"]["personal"].append(float(np.mean([_share(pk, rand, best) for pk in pick])))
            row["proxy"].append(float(z[p, :, :, :n].max(-1).mean()))
            if r_tr is not None:
                tpick = np.take_along_axis(u, r_tr[:, :n].argmax(-1)[:, None], -1)[:, 0]  # (Q,)
                row["utility"]["traditional"].append(float(tpick.mean()))
                row["share"]["traditional"].append(_share(tpick, rand, best))
        if r_tr is None:
            row["utility"]["traditional"] = row["share"]["traditional"] = None
        out["people"].append(row)
    return out


def choices_curve(rm, twin, people: list[Person], cands: PreferenceTable, *, n: int = 16,
                  choices: Sequence[int] = CHOICES, readings: int = 3, seed: int = 0, scored: dict | None = None,
                  twin_mix: float = 0.0) -> dict:
    """The mean share of the oracle's gain at best-of-``n`` against the number of a person's own choices
    the personal model reads; the traditional model reads none, so its share is one line."""
    out = {"n": n, "choices": [int(k) for k in choices], "personal": [], "worst": [], "traditional": None}
    scored = scored or {"features": candidate_features(rm, cands),
                        "twin": candidate_rewards(twin, cands, None) if twin is not None else None}
    for k in out["choices"]:
        res = best_of_n(rm, twin, people, cands, ns=[n], n_demos=k, readings=readings, seed=seed, scored=scored,
                         twin_mix=twin_mix)
        shares = [p["share"]["personal"][0] for p in res["people"]]
        out["personal"].append(float(np.nanmean(shares)))
        if twin is not None:
            trad = np.array([p["share"]["traditional"][0] for p in res["people"]])
            out["traditional"] = float(np.nanmean(trad))
            out["worst"].append(float(np.nanmin(np.array(shares) - trad)))
    return out


# ---------------------------------------------------------------------------------------------- twins
TWIN_KEYS = ("users", "user_seed", "data", "corpus_prompts", "corpus_seed", "signal", "rating_noise", "encoder")
TWIN_PAIRS = ("contested_only", "agreed_share", "segment_pool")  # the same pairs and features: the exact twin


def twin_rank(cfg: dict, other: dict) -> int | None:
    """How well ``other`` (a config dict) serves as the traditional twin of ``cfg``: 2 = a BTL run on the same
    data, users, pairs and features; 1 = same data and users only; None = not a twin."""
    from core.training.config import TrainConfig

    if (other or {}).get("method") != "btl" or any(other.get(k) != cfg.get(k) for k in TWIN_KEYS):
        return None
    same = all(other.get(k, TrainConfig.model_fields[k].default) == cfg.get(k, TrainConfig.model_fields[k].default)
               for k in TWIN_PAIRS)
    return 2 if same else 1


def find_twin(run_dir) -> str | None:
    """The best traditional twin among the finished runs beside ``run_dir`` (its folder's other runs)."""
    from pathlib import Path

    from core.common.runs import RunDir

    me = RunDir(run_dir)
    cfg = me.config() or {}
    best, best_rank = None, 0
    for d in sorted(Path(me.path).resolve().parent.iterdir()):
        if not d.is_dir() or d.resolve() == Path(me.path).resolve():
            continue
        other = RunDir(d)
        rank = twin_rank(cfg, other.config() or {}) if other.status().get("state") == "succeeded" else None
        if rank and rank > best_rank:
            best, best_rank = str(d), rank
    return best


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(p) -> None:
    p.add_argument("--run", required=True, help="a finished conditional run (personal, vpl*)")
    p.add_argument("--twin", help="its traditional twin (default: the best match among the runs beside it)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--people", choices=("outside", "trained"), default="outside",
                     help="people outside training (default) or the run's own users")
    who.add_argument("--weights", type=float, nargs=4, metavar="W", help="one simulated student's four weights")
    p.add_argument("--n", type=int, nargs="+", default=list(NS), help=f"the N of best-of-N (1..{MAX_CANDIDATES})")
    p.add_argument("--questions", type=int, default=30, help="fresh questions, each with its candidates")
    p.add_argument("--demos", type=int, default=8, help="own choices each person is read from")
    p.add_argument("--readings", type=int, default=3, help="independent readings of each person")
    p.add_argument("--twin-mix", type=float, default=0.0, help="lean the personal rule on the twin: 0 (personal "
                   "alone) .. 1 (the twin's picks); see docs/results/best-of-n.md")
    p.add_argument("--choices", type=int, nargs="*", help="also the share at N=16 against these numbers of choices")
    p.add_argument("--signal", type=float, default=1.0, help="text cue strength of the candidates (0..1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the result as JSON here")
    p.add_argument("--save", action="store_true", help=f"keep the summary in the run's folder ({SAVED}); the "
                   "Results page shows its share at N = 16")
    p.add_argument("--device", default="auto")
    p.add_argument("--dry-run", action="store_true", help="2 questions x 4 candidates, N 1 2 4, one reading")


def cli(args) -> int:
    import json
    from pathlib import Path

    from core.data.candidates import CandidateError, generate_candidates
    from core.users.people import outside_people, trained_people
    from core.users.tastes import validate_weights

    rm = RunRewardModel.from_run(args.run, device=args.device)
    twin_dir = args.twin or find_twin(args.run)
    twin = RunRewardModel.from_run(twin_dir, device=args.device) if twin_dir else None
    if twin is None:
        print(f"note: no traditional twin beside {args.run}; its rule is left out (give one with --twin)")
    check_twin_mix(args.twin_mix, twin)
    if args.weights is not None:
        try:
            people = [Person("student", "student", validate_weights(args.weights))]
        except ValueError as err:
            raise RewardModelError(f"weights: {err}") from None
    elif args.people == "trained":
        people = trained_people(rm.W)
    else:
        people = outside_people(rm.cfg.users, rm.W, user_seed=rm.cfg.user_seed, seed=args.seed)
    questions, n_cands, ns, readings = args.questions, max(args.n), args.n, args.readings
    if args.dry_run:
        questions, n_cands, ns, readings = 2, 4, [1, 2, 4], 1
    try:
        check_ns(ns, MAX_CANDIDATES)
        cands = generate_candidates(questions, n_cands, seed=args.seed, signal=args.signal, avoid=run_texts(rm))
    except CandidateError as err:
        raise RewardModelError(str(err)) from None
    res = best_of_n(rm, twin, people, cands, ns=ns, n_demos=args.demos, readings=readings, seed=args.seed,
                    twin_mix=args.twin_mix)
    res.update(run=rm.run.run_id, twin=None if twin is None else twin.run.run_id)
    print(f"best-of-N for {len(people)} people, {questions} fresh questions, read from {args.demos} choices "
          f"(run {rm.run.run_id}{f', twin {twin.run.run_id}' if twin else ''})")
    print(f"{'N':>3}  {'personal':>8}  {'trad.':>6}  {'random':>6}  {'oracle':>6}   share: personal  trad.  worst person")
    for i, n in enumerate(res["ns"]):
        col = {k: np.mean([p["utility"][k][i] for p in res["people"]]) if res["people"][0]["utility"][k] else np.nan
               for k in ("personal", "traditional", "random", "oracle")}
        sh = np.array([p["share"]["personal"][i] for p in res["people"]])
        tr = np.array([p["share"]["traditional"][i] for p in res["people"]]) if twin else None
        worst = f"{np.nanmin(sh - tr):+.3f}" if tr is not None and n > 1 else "-"
        print(f"{n:>3}  {col['personal']:8.3f}  {col['traditional']:6.3f}  {col['random']:6.3f}  {col['oracle']:6.3f}"
              f"   {np.nanmean(sh) if n > 1 else float('nan'):15.3f}  "
              f"{np.nanmean(tr) if tr is not None and n > 1 else float('nan'):5.3f}  {worst:>12}")
    if args.choices and not args.dry_run:
        curve = choices_curve(rm, twin, people, cands, n=min(16, n_cands), choices=args.choices,
                              readings=readings, seed=args.seed, twin_mix=args.twin_mix)
        res["choices_curve"] = curve
        print(f"share at N={curve['n']} against own choices: " + ", ".join(
            f"{k}: {s:.3f}" for k, s in zip(curve["choices"], curve["personal"], strict=True))
            + (f" (traditional {curve['traditional']:.3f})" if curve["traditional"] is not None else ""))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    if args.save and not args.dry_run:
        save_summary(rm.run, res, who="student" if args.weights is not None else args.people)
        print(f"saved {rm.run.path / SAVED}")
    return 0


def save_summary(run, res: dict, who: str) -> None:
    """The run's best-of-N summary in its folder: the mean share of the oracle's gain at each N for personal and
    its twin, over the people measured (read by core.experiments.tables.run_row for the Results page)."""
    from core.common.runs import now_iso, write_json_atomic

    def mean(rule, i):
        vals = [p["share"][rule][i] for p in res["people"] if p["share"][rule] is not None]
        return float(np.nanmean(vals)) if vals and not np.isnan(vals).all() else None

    write_json_atomic(run.path / SAVED, {
        "ns": res["ns"], "people": who, "n_people": len(res["people"]), "questions": res["questions"],
        "n_demos": res["n_demos"], "twin": res.get("twin"), "when": now_iso(),
        "share": {rule: [mean(rule, i) for i in range(len(res["ns"]))] for rule in ("personal", "traditional")}})
