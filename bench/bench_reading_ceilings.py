"""What bounds "any person from 8 choices" on this encoder (issue 18): two ceilings on the fresh questions.

    .venv/bin/python bench/bench_reading_ceilings.py [--users four-one-hot] [--seed 0] [--demos 8 16 64] \
        [--run RUN_DIR] [--dry-run]

Same people, questions and readings as bench/bench_any_person.py (fresh corpus generate_table(300, 4242);
8 of a person's own choices on 150 questions, scored on every pair they strictly prefer on the other 150,
10 readings):

    true-ratings reader   a Bayesian reader on the corpus's *true* ratings: the posterior mean of w over
                          Dirichlet(1) draws, BTL likelihood of the choices (sharpness 3); what reading from
                          K choices costs even with perfect features
    knowing probe         a logistic probe per person on frozen MiniLM differences e(chosen) - e(rejected),
                          fitted on that person's pairs of 1200 training-corpus questions: what a linear reader
                          of these features reaches for a person it *knows*
    linear vs MLP scorer  for each one-hot taste and the uniform person, a BTL scorer of one response's
                          MiniLM embedding, linear or a two-layer MLP (GELU, 256 wide), trained on that
                          person's pairs of the same 1200 questions: how much of a taste is not a linear
                          function of the embedding (why `personal` reads z's term through an MLP, z_head)
    --run RUN_DIR         a trained conditional run (e.g. one kept by bench_any_person.py --keep), the same
                          people served at four latents: its reader's, from 8 choices; the latent of the
                          true-ratings reader's w (a reading as good as 8 choices allow); the latent of the
                          person's *true* w; and an oracle z fitted by Adam to the person's own *scored* pairs.
                          A weight vector becomes a latent by the least-squares affine map from the users'
                          weights to their latents. The steps between them split what the run loses into
                          reading, the weights-to-latent map and the features.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import write_result  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", default="four-one-hot")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--demos", nargs="+", type=int, default=[8, 16, 64])
    ap.add_argument("--run", help="a trained conditional run: its reading against an oracle z (see above)")
    ap.add_argument("--dry-run", action="store_true", help="K=8 only, no probe")
    args = ap.parse_args(argv)
    if args.run:
        res = {"run": args.run, "seed": args.seed, "outside_people": run_ceiling(Path(args.run), seed=args.seed)}
        print(f"wrote {write_result('reading_ceilings', res)}")
        return 0
    res = {"users": args.users, "seed": args.seed, "true_ratings_reader": {}}
    from sklearn.linear_model import LogisticRegression

    from core.data import generate_table
    from core.data.probes import all_texts
    from core.users.people import _strict_pairs, build_people_set, outside_people, trained_people
    from core.users.tastes import preset

    fresh = generate_table(n_prompts=300, seed=4242)
    R = np.nan_to_num(fresh.ratings.reshape(-1, 4).astype(float))
    W = preset(args.users)
    people = trained_people(W) + outside_people(args.users, W, seed=args.seed)
    q = np.random.default_rng(args.seed).permutation(len(fresh))
    demo_q, score_q = q[: len(q) // 2], q[len(q) // 2:]
    print(f"$ bench/bench_reading_ceilings.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    for K in ([8] if args.dry_run else args.demos):
        ps = build_people_set(fresh.ratings, people, demo_q, score_q, n_demos=K, n_readings=10, seed=args.seed)
        w = true_ratings_weights(R, ps)  # (P, readings, 4)
        sc = w @ R[ps.text_ids].T  # (P, readings, T)
        acc = [np.mean(sc[p][:, pr[:, 0]] > sc[p][:, pr[:, 1]]) for p, pr in enumerate(ps.pairs)]
        acc = np.array(acc)
        out = acc[len(W):]
        print(f"true-ratings reader, K={K:>2}: trained users {np.round(acc[:len(W)], 3).tolist()}  "
              f"outside people mean {out.mean():.3f} min {out.min():.3f}")
        res["true_ratings_reader"][K] = {"trained": acc[:len(W)].tolist(), "outside_mean": float(out.mean()),
                                         "outside_min": float(out.min())}
    if args.dry_run:
        print(f"wrote {write_result('reading_ceilings', res)}")
        return 0
    from core.models.embedding_store import EmbeddingCache, default_cache_root
    from core.models.encoders import TextEncoder

    cache = EmbeddingCache(default_cache_root(), TextEncoder.load())
    train = generate_table(n_prompts=1500, seed=0)
    Etr, Efr = cache.get(all_texts(train)), cache.get(all_texts(fresh))
    ps = build_people_set(fresh.ratings, people, demo_q, score_q, n_demos=8, n_readings=1, seed=args.seed)
    C = train.n_completions
    acc = []
    for p, person in enumerate(people):
        pr = _strict_pairs(train.ratings, person.weights, np.arange(1200))
        d = Etr[pr[:, 0] * C + pr[:, 1]] - Etr[pr[:, 0] * C + pr[:, 2]]
        clf = LogisticRegression(C=1.0, fit_intercept=False, max_iter=1000).fit(
            np.concatenate([d, -d]), np.r_[np.ones(len(d)), np.zeros(len(d))])
        sc, pp = Efr[ps.text_ids] @ clf.coef_[0], ps.pairs[p]
        acc.append(np.mean(sc[pp[:, 0]] > sc[pp[:, 1]]))
    acc = np.array(acc)
    print(f"knowing probe (MiniLM, linear): trained users {np.round(acc[:len(W)], 3).tolist()}  "
          f"outside people mean {acc[len(W):].mean():.3f} min {acc[len(W):].min():.3f}")
    res["knowing_probe"] = {"trained": acc[:len(W)].tolist(), "outside_mean": float(acc[len(W):].mean())}
    res["scorers"] = scorers(Etr, Efr, train.ratings, fresh.ratings, seed=args.seed)
    print(f"wrote {write_result('reading_ceilings', res)}")
    return 0


def true_ratings_weights(R: np.ndarray, ps, sharpness: float = 3.0, n_draws: int = 20000) -> np.ndarray:
    """The true-ratings reader: each reading's posterior mean of w (P, readings, 4) over Dirichlet(1) draws,
    BTL likelihood of its K choices on the corpus's ratings R (T_all, 4), one row a response."""
    draws = np.random.default_rng(1).dirichlet(np.ones(4), n_draws)  # (S, 4) the prior
    out = []
    for ctx in ps.ctx:  # one person at a time: (readings, K, 2)
        d = R[ctx[..., 0]] - R[ctx[..., 1]]  # (readings, K, 4)
        ll = -np.logaddexp(0, -sharpness * (d @ draws.T)).sum(1)  # (readings, S)
        post = np.exp(ll - ll.max(-1, keepdims=True))
        out.append((post / post.sum(-1, keepdims=True)) @ draws)
    return np.stack(out)


def run_ceiling(run_dir: Path, seed: int, steps: int = 300) -> dict:
    """A trained run's reader from 8 choices against an oracle latent fitted to each person's scored pairs."""
    import torch

    from core.data import generate_table
    from core.data.probes import all_texts
    from core.models.losses import btl_loss_from_margin
    from core.serving.run_reward import RunRewardModel
    from core.users.people import build_people_set, outside_people, people_accuracy, trained_people

    rm = RunRewardModel.from_run(run_dir, device="cpu")
    if not rm.conditional:
        raise SystemExit(f"--run {run_dir}: a user-agnostic run has no latent to fit")
    if not hasattr(rm.model, "user_latents"):
        raise SystemExit(f"--run {run_dir}: user_encoder {rm.cfg.user_encoder!r} keeps no latent per user, so a "
                         "weight vector has no latent here; use a 'blend' or 'mixture' run")
    fresh = generate_table(n_prompts=300, seed=4242)
    E = torch.from_numpy(np.asarray(rm.cache.get(all_texts(fresh)), dtype=np.float32))  # (Q * C, D)
    q = np.random.default_rng(seed).permutation(len(fresh))
    people = trained_people(rm.W) + outside_people(rm.cfg.users, rm.W, user_seed=rm.cfg.user_seed, seed=seed)
    ps = build_people_set(fresh.ratings, people, q[:150], q[150:], n_demos=8, n_readings=10, seed=seed)
    m = rm.model.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    Tq = E[ps.text_ids]  # (T, D)
    z = m.user_latents.detach().mean(0).repeat(len(people), 1).requires_grad_(True)  # (P, L), from the centre
    opt = torch.optim.Adam([z], lr=0.05)
    for _ in range(steps):
        r = m.reward_grid(Tq, z)  # (P, T)
        loss = sum(btl_loss_from_margin(r[i, pr[:, 0]] - r[i, pr[:, 1]]).mean()
                   for i, pr in enumerate(ps.pairs) if len(pr))
        opt.zero_grad()
        loss.backward()
        opt.step()
    embed = lambda ids: E[np.asarray(ids)]  # noqa: E731

    def at(z):  # (P * R, L) latents -> (P,) accuracy
        return people_accuracy(m, ps, embed, latents=(z, torch.zeros_like(z)))

    # a person's weights w -> a latent: the least-squares affine map from the users' weights to their latents
    X = torch.cat([torch.tensor(rm.W, dtype=torch.float32), torch.ones(len(rm.W), 1)], 1)  # (U, 5)
    M = torch.linalg.lstsq(X, m.user_latents.detach()).solution  # (5, L)

    def from_weights(w):  # (P * R, 4) -> (P * R, L)
        w = torch.as_tensor(w, dtype=torch.float32).reshape(-1, 4)
        return torch.cat([w, torch.ones(len(w), 1)], 1) @ M

    R = np.nan_to_num(fresh.ratings.reshape(-1, 4).astype(float))
    true_w = np.repeat(np.stack([p.weights for p in people]), ps.n_readings, 0)  # (P * R, 4)
    rows = (("read from 8 choices", people_accuracy(m, ps, embed)),
            ("z of the true-ratings reader's w", at(from_weights(true_ratings_weights(R, ps)))),
            ("z of the person's true w", at(from_weights(true_w))),
            ("oracle z (fit on the scored pairs)", at(z.detach().repeat_interleave(ps.n_readings, 0))))
    n = len(rm.W)
    print(f"$ bench/bench_reading_ceilings.py --run {run_dir} --seed {seed}")
    for name, a in rows:
        print(f"{name:>36}: trained users mean {np.nanmean(a[:n]):.3f}  outside people mean "
              f"{np.nanmean(a[n:]):.3f} min {np.nanmin(a[n:]):.3f}")
    return {name: {"mean": float(np.nanmean(a[n:])), "min": float(np.nanmin(a[n:]))} for name, a in rows}


def scorers(Etr, Efr, Rtr, Rfr, seed: int, steps: int = 3000) -> dict:
    """Linear and MLP BTL scorers per taste, trained on the strict pairs of 1200 training questions, scored on
    every strict pair of the fresh questions."""
    import torch

    from core.models.losses import btl_loss_from_margin
    from core.users.people import _strict_pairs

    C = Rtr.shape[1]
    Etr = torch.as_tensor(Etr, dtype=torch.float32)  # (Q * C, D): one row a response
    Efr = torch.as_tensor(Efr, dtype=torch.float32)
    D = Etr.shape[-1]
    tastes = {"helpfulness": [1, 0, 0, 0], "honesty": [0, 1, 0, 0], "instruction": [0, 0, 1, 0],
              "truthfulness": [0, 0, 0, 1], "uniform": [0.25] * 4}
    result = {}
    for name, w in tastes.items():
        w = np.array(w, dtype=float)
        tr = torch.as_tensor(_strict_pairs(Rtr, w, np.arange(1200)))  # (n, 3) question, chosen, rejected
        fr = torch.as_tensor(_strict_pairs(Rfr, w, np.arange(len(Rfr))))
        out = []
        for kind in ("linear", "mlp"):
            torch.manual_seed(seed)
            net = torch.nn.Linear(D, 1) if kind == "linear" else torch.nn.Sequential(
                torch.nn.Linear(D, 256), torch.nn.GELU(), torch.nn.Linear(256, 1))
            opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
            for _ in range(steps):
                b = tr[torch.randint(0, len(tr), (256,))]  # (256, 3)
                m = net(Etr[b[:, 0] * C + b[:, 1]]) - net(Etr[b[:, 0] * C + b[:, 2]])  # (256, 1)
                loss = btl_loss_from_margin(m.squeeze(-1)).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                s = net(Efr).squeeze(-1)  # (Qf * C,)
            out.append((s[fr[:, 0] * C + fr[:, 1]] > s[fr[:, 0] * C + fr[:, 2]]).float().mean().item())
        print(f"{name:>13} scorer on MiniLM, fresh questions: linear {out[0]:.3f}  MLP {out[1]:.3f}")
        result[name] = {"linear": out[0], "mlp": out[1]}
    return result


if __name__ == "__main__":
    raise SystemExit(main())
