"""CLI: ``python -m core.personas --stories FILE --n-questions N --mode pairwise|scoring --judge default --run-dir DIR``

or ``python -m core.personas --config RUN/config.json --run-dir RUN`` (how core.jobs.manager launches it).
Writes status through core.common.runs.RunDir, results to RUN/results.jsonl, resumes on restart, and
marks the run cancelled on SIGTERM / Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback
from pathlib import Path

from core.common.cli import cli_main
from core.personas.config import PersonaConfig, validate_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core.personas", description="Simulate persona preferences with an LLM judge.")
    p.add_argument("--config", help="JSON file with the options below (as written to config.json)")
    p.add_argument("--run-dir", required=True, help="run directory (created if missing)")
    for name, field in PersonaConfig.model_fields.items():
        if name in ("kind", "dry_run", "reuse_prefix"):
            continue
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=field.description)
    p.add_argument("--no-reuse-prefix", dest="reuse_prefix", action="store_false", default=None,
                   help=PersonaConfig.model_fields["reuse_prefix"].description + " (this flag turns it off)")
    p.add_argument("--dry-run", action="store_true", default=None, help=PersonaConfig.model_fields["dry_run"].description)
    return p


def resolve_config(args: argparse.Namespace) -> PersonaConfig:
    data: dict = {}
    if args.config:
        try:
            data = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read config {args.config}: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"config {args.config}: expected a JSON object")
    for name in PersonaConfig.model_fields:
        value = getattr(args, name, None)
        if value is not None:
            data[name] = value
    return validate_config(data)


def load_questions(cfg: PersonaConfig):
    from core.data import generate_table, load_ultrafeedback
    from core.personas.simulate import pick_questions

    n_q = 2 if cfg.dry_run else cfg.n_questions
    if cfg.data == "offline":
        table = generate_table(max(cfg.corpus_size, n_q), seed=cfg.seed)
    else:
        table = load_ultrafeedback(cfg.data, lenient=True)
    return pick_questions(table, n_q, cfg.seed)


@cli_main  # e.g. a --run-dir that cannot be created: one "error: ..." line, exit status 2
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from core.common.runs import RunDir

    run = RunDir(args.run_dir).create()
    try:
        cfg = resolve_config(args)
    except ValueError as e:
        run.mark_final("failed", error=str(e), kind="personas")
        print(f"error: {e}", file=sys.stderr)
        return 2
    stop = {"flag": False}

    def _on_term(signum, frame):
        stop["flag"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_term)
    run.write_config(cfg.model_dump())
    run.mark_running(kind="personas")
    run.log(f"personas run: {cfg.model_dump_json()}")
    setting_up = True  # reading the stories and questions and loading the judge: a ValueError is bad input
    try:
        from core.personas.simulate import run_simulation
        from core.personas.stories import load_stories

        stories = load_stories(cfg.stories)
        if cfg.n_stories:
            stories = stories[:cfg.n_stories]
        if cfg.dry_run:
            stories = stories[:2]
        questions = load_questions(cfg)
        t0 = time.time()
        from core.personas.judges import make_judge

        judge = make_judge(cfg.judge, reuse_prefix=cfg.reuse_prefix, batch_size=cfg.batch_size,
                           threads=cfg.threads, concurrency=cfg.batch_size)
        setting_up = False
        run.log(f"judge {getattr(judge, 'name', cfg.judge)} ready in {time.time() - t0:.1f}s; "
                f"{len(stories)} stories x {len(questions)} questions, mode {cfg.mode}")
        qpath = run.path / "quality.json"
        if cfg.quality_probe and not cfg.dry_run and not qpath.exists():
            from core.common.runs import write_json_atomic
            from core.personas.quality import run_probe

            probe = run_probe(judge, cfg.quality_probe)
            write_json_atomic(qpath, probe)
            run.log(f"judge-quality probe: {probe['spearman']} ({probe['method']})")
        max_new = cfg.max_new_tokens or (8 if cfg.mode == "pairwise" else (24 if cfg.dry_run else 64))
        from core.common.progress import Progress, status_writer

        # a bar on a terminal, plain lines in a job's log.txt, and the same progress in status.json
        with Progress(len(stories) * len(questions), unit="items", stage=f"personas {cfg.mode}",
                      status=status_writer(run)) as prog:
            counts = run_simulation(judge, stories, questions, mode=cfg.mode, run_dir=run.path,
                                    scoring_method=cfg.scoring_method, pairwise_method=cfg.pairwise_method,
                                    max_new_tokens=max_new, chunk=cfg.batch_size, progress=prog.resume_hook(),
                                    should_stop=lambda: stop["flag"])
        status = getattr(judge, "probs_status", None)
        if status is not None:
            run.log(f"endpoint probabilities: {status()}; requests {getattr(judge, 'requests', {})}")
        run.log(f"done: {counts} in {time.time() - t0:.1f}s")
        run.mark_final("succeeded", counts=counts)
        return 0
    except KeyboardInterrupt:
        run.log("cancelled")
        run.mark_final("cancelled", error="stopped by signal")
        return 130
    except Exception as e:
        from core.personas.simulate import Cancelled

        if isinstance(e, Cancelled):
            run.mark_final("cancelled", error="stopped by signal")
            return 130
        run.log(traceback.format_exc())  # the run's log.txt keeps the traceback; the terminal gets one line
        run.mark_final("failed", error=f"{type(e).__name__}: {e}")
        from core.common.cli import is_expected, report

        if is_expected(e) or (setting_up and isinstance(e, ValueError)):
            return report(e)  # exit status 2, like a bad config
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
