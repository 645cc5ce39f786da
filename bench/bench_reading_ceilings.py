"""What bounds "any person from 8 choices" on this encoder (issue 18): two ceilings on the fresh questions.

    .venv/bin/python bench/bench_reading_ceilings.py [--users four-one-hot] [--seed 0] [--demos 8 16 64] [--dry-run]

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
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", default="four-one-hot")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--demos", nargs="+", type=int, default=[8, 16, 64])
    ap.add_argument("--dry-run", action="store_true", help="K=8 only, no probe")
    args = ap.parse_args(argv)
    from sklearn.linear_model import LogisticRegression

    from core.data import generate_table
    from core.data.probes import all_texts
    from core.people import _strict_pairs, build_people_set, outside_people, trained_people
    from core.users import preset

    fresh = generate_table(n_prompts=300, seed=4242)
    R = np.nan_to_num(fresh.ratings.reshape(-1, 4).astype(float))
    W = preset(args.users)
    people = trained_people(W) + outside_people(args.users, W, seed=args.seed)
    q = np.random.default_rng(args.seed).permutation(len(fresh))
    demo_q, score_q = q[: len(q) // 2], q[len(q) // 2:]
    draws = np.random.default_rng(1).dirichlet(np.ones(4), 20000)  # (S, 4) the prior
    print(f"$ bench/bench_reading_ceilings.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    for K in ([8] if args.dry_run else args.demos):
        ps = build_people_set(fresh.ratings, people, demo_q, score_q, n_demos=K, n_readings=10, seed=args.seed)
        acc = []
        for p in range(len(people)):
            s = []
            for r in range(ps.n_readings):
                d = R[ps.ctx[p, r, :, 0]] - R[ps.ctx[p, r, :, 1]]  # (K, 4)
                ll = -np.logaddexp(0, -3 * (d @ draws.T)).sum(0)
                post = np.exp(ll - ll.max())
                w = (post / post.sum()) @ draws
                sc, pr = R[ps.text_ids] @ w, ps.pairs[p]
                s.append(np.mean(sc[pr[:, 0]] > sc[pr[:, 1]]))
            acc.append(np.mean(s))
        acc = np.array(acc)
        out = acc[len(W):]
        print(f"true-ratings reader, K={K:>2}: trained users {np.round(acc[:len(W)], 3).tolist()}  "
              f"outside people mean {out.mean():.3f} min {out.min():.3f}")
    if args.dry_run:
        return 0
    from core.encoders import EmbeddingCache, TextEncoder, default_cache_root

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
    scorers(Etr, Efr, train.ratings, fresh.ratings, seed=args.seed)
    return 0


def scorers(Etr, Efr, Rtr, Rfr, seed: int, steps: int = 3000) -> None:
    """Linear and MLP BTL scorers per taste, trained on 1200 training questions, scored on every strict pair
    of the fresh questions."""
    import itertools

    import torch
    import torch.nn.functional as F

    Etr = torch.as_tensor(Etr, dtype=torch.float32).reshape(len(Rtr), 4, -1)[:1200]  # (Q, 4, D)
    Efr = torch.as_tensor(Efr, dtype=torch.float32).reshape(len(Rfr), 4, -1)
    Rtr = torch.as_tensor(np.nan_to_num(Rtr[:1200]), dtype=torch.float32)  # (Q, 4, 4 aspects)
    Rfr = torch.as_tensor(np.nan_to_num(Rfr), dtype=torch.float32)
    D = Etr.shape[-1]
    tastes = {"helpfulness": [1, 0, 0, 0], "honesty": [0, 1, 0, 0], "instruction": [0, 0, 1, 0],
              "truthfulness": [0, 0, 0, 1], "uniform": [0.25] * 4}
    for name, w in tastes.items():
        w = torch.tensor(w, dtype=torch.float32)
        r, rf = Rtr @ w, Rfr @ w  # (Q, 4)
        out = []
        for kind in ("linear", "mlp"):
            torch.manual_seed(seed)
            net = torch.nn.Linear(D, 1) if kind == "linear" else torch.nn.Sequential(
                torch.nn.Linear(D, 256), torch.nn.GELU(), torch.nn.Linear(256, 1))
            opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
            for _ in range(steps):
                q, i, j = (torch.randint(0, n, (256,)) for n in (len(r), 4, 4))
                d = r[q, i] - r[q, j]
                keep = d != 0
                m = net(Etr[q, i]).squeeze(-1) - net(Etr[q, j]).squeeze(-1)
                loss = F.softplus(-torch.sign(d[keep]) * m[keep]).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                s = net(Efr).squeeze(-1)  # (Q, 4)
            hits = [((s[:, a] - s[:, b]) * (rf[:, a] - rf[:, b]) > 0)[rf[:, a] != rf[:, b]]
                    for a, b in itertools.combinations(range(4), 2)]
            out.append(torch.cat(hits).float().mean().item())
        print(f"{name:>13} scorer on MiniLM, fresh questions: linear {out[0]:.3f}  MLP {out[1]:.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
