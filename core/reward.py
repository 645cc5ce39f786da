"""``python -m core.reward``: score or rank answers with a finished run, for a user read from their choices, or
measure its best-of-N picks (the code: core.serving.run_reward and core.serving.best_of_n).

    python -m core.reward score --run DIR --demos demos.json --prompt "..." --responses a.txt b.txt [--out r.json]
    python -m core.reward rank --run DIR --user 1 --prompt "..." --candidates cands.jsonl --out best.json
    python -m core.reward best-of-n --run DIR [--twin DIR] [--people outside|trained] [--save]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.common.cli import cli_main
from core.serving import best_of_n
from core.serving.run_reward import Demo, RewardModelError, RunRewardModel


def _load_demos(path: str) -> list[Demo]:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RewardModelError(f"demos: cannot read {path} ({err})") from None
    if not isinstance(raw, list):
        raise RewardModelError("demos: the file must hold a JSON list")
    out = []
    for i, d in enumerate(raw):
        if isinstance(d, dict):
            missing = [k for k in ("prompt", "chosen", "rejected") if k not in d]
            if missing:
                raise RewardModelError(f"demos[{i}]: missing {', '.join(missing)}")
            d = (d["prompt"], d["chosen"], d["rejected"])
        out.append(tuple(d))
    return out


def _load_candidates(path: str) -> list[str]:
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            raise RewardModelError(f"candidates: line {n} of {path} is not JSON") from None
        out.append(item if isinstance(item, str) else (item or {}).get("response", ""))
    return out


@cli_main  # an expected error (a run that cannot be read, a missing model, ...): one "error: ..." line, exit status 2
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.reward", description="Score or rank responses with a trained run.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("score", "one reward per response file"), ("rank", "best-of-N over a JSONL of candidates")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--run", required=True, help="a finished run directory")
        who = p.add_mutually_exclusive_group()
        who.add_argument("--demos", help="JSON list of {prompt, chosen, rejected} (or [p, c, r]) choices")
        who.add_argument("--user", type=int, help="score as the run's simulated user N instead")
        p.add_argument("--prompt", required=True)
        if name == "score":
            p.add_argument("--responses", nargs="+", required=True, help="text files, one response each")
        else:
            p.add_argument("--candidates", required=True, help="JSONL: a string or {\"response\": ...} per line")
        p.add_argument("--out", help="write the result as JSON here")
        p.add_argument("--device", default="auto")
        p.add_argument("--seed", type=int, default=0, help="seed for the uncertainty samples (kept for symmetry)")
        p.add_argument("--dry-run", action="store_true", help="load the run and check the inputs, score nothing")
    best_of_n.add_arguments(sub.add_parser("best-of-n", help="the pick of each rule among N fresh answers, judged by "
                                           "each person's true taste (core.serving.best_of_n)"))
    args = ap.parse_args(argv)
    if args.cmd == "best-of-n":
        return best_of_n.cli(args)
    try:
        rm = RunRewardModel.from_run(args.run, device=args.device)
        user = None if args.user is None else args.user
        estimate = None
        if args.demos:
            estimate = rm.infer_user(_load_demos(args.demos))
            user = estimate
        if args.cmd == "score":
            names = list(args.responses)
            responses = []
            for f in names:
                try:
                    responses.append(Path(f).read_text())
                except OSError as err:
                    raise RewardModelError(f"responses: cannot read {f} ({err})") from None
        else:
            responses = _load_candidates(args.candidates)
            names = [f"#{i}" for i in range(len(responses))]
        if args.dry_run:
            print(f"ok: {rm.run.run_id}, {len(responses)} responses, user {'estimate' if estimate else user}")
            return 0
        rewards = rm.score(args.prompt, responses, user=user)
    except RewardModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    order = sorted(range(len(rewards)), key=lambda i: -rewards[i])
    rows = [{"rank": k + 1, "response": names[i], "reward": rewards[i]} for k, i in enumerate(order)]
    print(f"{'rank':>4}  {'reward':>9}  response")
    for r in rows:
        text = r["response"] if args.cmd == "score" else responses[int(r["response"][1:])][:60].replace("\n", " ")
        print(f"{r['rank']:>4}  {r['reward']:9.4f}  {text}")
    result = {"run": rm.run.run_id, "prompt": args.prompt, "ranking": rows,
              "best": responses[order[0]] if args.cmd == "rank" else names[order[0]],
              "user": estimate.to_json() if estimate else args.user}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
