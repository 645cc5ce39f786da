"""Running the few-shot baseline as runs: ``fewshot-kN`` methods x seeds into ordinary run dirs, the
users' prompts answered here or in worker processes (each loads the judge), with progress per seed.

    core.experiments.fewshot          what is asked and how it is read (prompts, choosers, plans, records)
    core.experiments.fewshot_runs     this: who asks it (processes) and where the answers go (run dirs)

``python -m core.experiments compare --presets fewshot-k0 fewshot-k8 ...`` calls ``run_methods``.
"""

from __future__ import annotations

import time

from core.experiments.fewshot import chooser_for, parse_methods, prepare, records, user_probs

_WORKER: dict = {}


def _worker_init(judge_spec: str, queue) -> None:
    from core.personas.judges import make_judge

    judge = make_judge(judge_spec)
    _WORKER.update(chooser=chooser_for(judge), name=getattr(judge, "name", judge_spec), queue=queue)


def _worker_task(tag, demos, ks, queries, reuse):
    queue = _WORKER["queue"]
    probs = user_probs(_WORKER["chooser"], demos, ks, queries, reuse=reuse, on_rows=lambda n: queue.put((tag, n)))
    return probs, _WORKER["name"]


def _answer_tasks(tasks: list[tuple], judge_spec: str, workers: int, reuse: bool, on_rows) -> tuple[list, str]:
    """``user_probs`` for every (tag, demos, ks, queries) task, in ``workers`` processes (each loads the
    judge; 1 = here). Returns (answers in task order, judge name); ``on_rows(tag, n)`` as prompts finish."""
    if workers <= 1:
        from core.personas.judges import make_judge

        judge = make_judge(judge_spec)
        chooser = chooser_for(judge)
        answers = [user_probs(chooser, d, ks, q, reuse=reuse, on_rows=lambda n, t=tag: on_rows(t, n))
                   for tag, d, ks, q in tasks]
        return answers, getattr(judge, "name", judge_spec)
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    progress = ctx.Queue()

    expected = sum(2 * len(q) * len(ks) for _, _, ks, q in tasks)
    received = [0]

    def drain(wait_s: float = 0.0):
        """Pass on the workers' progress; with ``wait_s``, wait that long for what is still in flight."""
        while received[0] < expected:
            try:
                tag, n = progress.get(timeout=wait_s) if wait_s else progress.get_nowait()
            except queue_mod.Empty:
                return
            received[0] += n
            on_rows(tag, n)

    answers, name = [None] * len(tasks), judge_spec
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                             initargs=(judge_spec, progress)) as pool:
        futures = {pool.submit(_worker_task, tag, d, ks, q, reuse): i for i, (tag, d, ks, q) in enumerate(tasks)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                drain()
                for f in done:
                    answers[futures[f]], name = f.result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        drain(wait_s=5.0)  # a worker's last counts may arrive after its answer
    return answers, name


def run_methods(methods: list[str], seeds: list[int], out, overrides: dict | None = None, *,
                judge_spec: str = "default", how: str = "infogain", queries_per_user: int = 20, log=print,
                workers: int = 1, reuse: bool = True, progress=None) -> list:
    """Run ``fewshot-kN`` methods into out/runs/<method>-s<seed>/ (ordinary run dirs, one metrics record).

    ``workers`` processes share the users (each loads the judge; on a CPU each uses one thread).
    ``progress`` (a core.common.progress.Progress) gets a "few-shot" stage counted in prompts; each run's
    status.json says ``running`` with its seed's progress until its record is written.
    """
    from pathlib import Path

    from core.common.progress import Progress
    from core.common.runs import RunDir
    from core.training.config import TrainConfig, build_config
    from core.training.trainer import load_table
    from core.users.tastes import load_users

    ks = parse_methods(methods)
    out = Path(out)
    data, plans, groups, limits = {}, {}, {}, {}  # data: (table, users) per config-without-seed
    for seed in seeds:
        base = {k: v for k, v in (overrides or {}).items() if k in TrainConfig.model_fields}
        cfg = build_config({**base, "seed": seed})
        key = cfg.model_dump_json(exclude={"seed"})
        if key not in data:
            data[key] = (load_table(cfg), load_users(cfg))
        table, W = data[key]
        plans[seed] = prepare(table, W, ks, seed=seed, how=how, queries_per_user=queries_per_user,
                              test_share=cfg.test_share, contested_only=cfg.contested_only)
        limits[seed] = cfg
        groups[seed] = None
        if isinstance(cfg.users, str):
            from core.users.tastes import preset_groups

            groups[seed] = preset_groups(cfg.users)
    def run_config(k, seed, judge):
        c = limits[seed]  # the users and data, so that the Results page compares like with like
        return {"kind": "fewshot", "preset": f"fewshot-k{k}", "method": "fewshot", "k": k, "seed": seed,
                "judge": judge, "how": how, "queries_per_user": queries_per_user, "users": c.users,
                "converge_threshold": c.converge_threshold,
                **{f: getattr(c, f) for f in ("user_seed", "data", "corpus_prompts", "corpus_seed", "signal",
                                              "rating_noise", "contested_only")}}

    runs = {seed: [RunDir(out / "runs" / f"fewshot-k{k}-s{seed}").create() for k in ks] for seed in seeds}
    seed_progress = {}
    for seed in seeds:
        for k, run in zip(ks, runs[seed], strict=True):
            run.metrics_path.unlink(missing_ok=True)
            run.write_config(run_config(k, seed, judge_spec))
            run.mark_running(kind="fewshot", method=f"fewshot-k{k}")

        def write_all(snapshot, runs=runs[seed]):
            for run in runs:
                run.update_status(progress=snapshot)

        seed_progress[seed] = Progress(plans[seed].rows(), unit="prompts", stage=f"few-shot seed {seed}",
                                       status=write_all, show=False, status_every_s=2.0)
    total = sum(p.rows() for p in plans.values())
    if progress is not None:
        progress.new_stage(f"few-shot {' '.join(methods)}", total, unit="prompts")

    def on_rows(tag, n):
        seed_progress[tag[0]].update(n)
        if progress is not None:
            progress.update(n)

    tasks = [((seed, u), plans[seed].demos[u], plans[seed].ks, q)
             for seed in seeds for u, q in enumerate(plans[seed].queries)]
    tasks += [((seed, "reference"), [], [0], plans[seed].reference) for seed in seeds
              if plans[seed].reference is not None]
    t0 = time.perf_counter()
    try:
        answers, judge_name = _answer_tasks(tasks, judge_spec, workers, reuse, on_rows)
    except BaseException as err:
        state = "cancelled" if isinstance(err, KeyboardInterrupt) else "failed"
        for seed in seeds:
            for run in runs[seed]:
                run.mark_final(state, error=f"{type(err).__name__}: {err}", if_state=("running",))
        raise
    wall = time.perf_counter() - t0
    answer = {tag: ans for (tag, *_), ans in zip(tasks, answers, strict=True)}
    dirs = []
    for seed in seeds:
        probs = [answer[(seed, u)] for u in range(len(plans[seed].queries))]
        ref = answer[(seed, "reference")][0] if (seed, "reference") in answer else None
        res = records(plans[seed], probs, ref, groups=groups[seed], log=log)
        snap = seed_progress[seed].close()
        for k, run in zip(ks, runs[seed], strict=True):
            run.write_config(run_config(k, seed, judge_name))
            run.append_metrics({"step": 0, "epoch": 0.0, **res[k], "wall_s": wall / (len(ks) * len(seeds))})
            run.mark_final("succeeded", kind="fewshot", progress={**snap, "fraction": 1.0})
            dirs.append(run.path)
    return dirs
