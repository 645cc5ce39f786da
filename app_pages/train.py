"""Train: launch runs as background jobs (one job per run, or methods x seeds as one grid job whose members
are runs), watch per-user curves live, cancel, compare."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.jobs import slurm
from core.jobs.manager import JobManager, default_root
from core.training.config import LESSON_FOUR_USERS, LESSON_TWO_OPPOSED, PRESETS, ConfigError
from core.users.tastes import PRESETS as USER_PRESETS
from ui.curves import curves, stop_text
from ui.state import current_users, run_label

QUICK = {k: v for k, v in LESSON_TWO_OPPOSED.items() if k != "users"}
ACTIVE = ("queued", "running")
REFRESH_S = 2.0


@st.cache_resource
def _manager(root: str) -> JobManager:
    return JobManager(root, max_concurrent=1)


def manager() -> JobManager:
    return _manager(str(default_root()))


@st.cache_data(ttl=30, show_spinner=False)
def slurm_partitions() -> list[str] | None:
    """Partitions where sinfo answers (asked at most every 30 s: sinfo can hang on a dead controller)."""
    return slurm.partitions()


def launcher_fields() -> tuple[str, dict | None]:
    """The launcher choice, shown only where Slurm answers: ('local', None) or ('slurm', params)."""
    parts = slurm_partitions()
    if not parts:
        return "local", None
    where = st.radio("Run on", ["This machine", "Slurm"], key="launcher", horizontal=True,
                     help="Slurm: each run becomes a Slurm job; Slurm's queue decides when it starts.")
    if where != "Slurm":
        return "local", None
    c1, c2, c3, c4 = st.columns(4)
    partition = c1.selectbox("Partition", parts, key="slurm_partition")
    time_min = c2.number_input("Time limit (min)", 1, 7 * 24 * 60, slurm.DEFAULTS["time_min"], key="slurm_time")
    cpus = c3.number_input("CPUs per job", 1, 256, slurm.DEFAULTS["cpus"], key="slurm_cpus")
    gpus = c4.number_input("GPUs per job", 0, 16, slurm.DEFAULTS["gpus"], key="slurm_gpus",
                           help="Asked as --gres=gpu:N; 0 asks for none.")
    c5, c6, c7 = st.columns(3)
    nodes = c5.number_input("Nodes", 1, 64, slurm.LAYOUT["nodes"], key="slurm_nodes",
                            help="One run across nodes x tasks per node ranks (torch.distributed; docs/distributed.md).")
    tasks = c6.number_input("Tasks per node", 1, 16, slurm.LAYOUT["tasks_per_node"], key="slurm_tasks",
                            help="Ranks on each node; srun starts them. With GPUs, one per GPU.")
    per_task = c7.number_input("GPUs per task", 0, 16, slurm.LAYOUT["gpus_per_task"], key="slurm_gpus_per_task",
                               help="Asked as --gpus-per-task; use it or GPUs per job, not both.")
    st.caption(f"The runs folder ({default_root()}) must be on a filesystem every node shares."
               + (" Several ranks train one run each: the runs are launched one job each, not as a grid."
                  if nodes * tasks > 1 else ""))
    return "slurm", {"partition": partition, "time_min": int(time_min), "cpus": int(cpus), "gpus": int(gpus),
                     "nodes": int(nodes), "tasks_per_node": int(tasks), "gpus_per_task": int(per_task)}


def users_field() -> tuple[dict, str]:
    name, seed, W = current_users()
    if name in USER_PRESETS:
        return {"users": name, "user_seed": int(seed)}, f"preset **{name}** (seed {seed}, {len(W)} users)"
    return {"users": np.asarray(W).tolist()}, f"**{len(W)} custom users** from the Users page"


def parse_seeds(text: str) -> list[int]:
    seeds = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = (int(x) for x in part.split("-", 1))
            seeds.extend(range(lo, hi + 1))
        else:
            seeds.append(int(part))
    if not seeds or min(seeds) < 0 or len(seeds) > 20:
        raise ValueError("give 1-20 non-negative seeds, e.g. 0,1,2 or 0-4")
    return sorted(set(seeds))


def submit_all(jm: JobManager, methods: list[str], seeds: list[int], extra: dict, launcher: str = "local",
               slurm_params: dict | None = None) -> list[str]:
    ids = []
    for m in methods:
        for s in seeds:
            ids.append(jm.submit({"preset": m, "seed": s, **extra}, launcher=launcher, slurm_params=slurm_params))
    return ids


def submit_grid(jm: JobManager, methods: list[str], seeds: list[int], extra: dict, launcher: str = "local",
                slurm_params: dict | None = None) -> str:
    """Methods x seeds as one grid job (core.experiments.gridjob): one process, one run per member, same results."""
    return jm.submit({"kind": "grid", "methods": list(methods), "seeds": list(seeds), "overrides": extra},
                     launcher=launcher, slurm_params=slurm_params)


def with_members(run_ids: list[str], runs_by_id: dict) -> list[str]:
    """A grid job stands for its members (it has no curves of its own); other runs stand for themselves."""
    out = []
    for rid in run_ids:
        members = (runs_by_id.get(rid) or {}).get("members")
        if members is None:
            out.append(rid)
        else:
            out.extend(m for m in members if m in runs_by_id)
    return list(dict.fromkeys(out))


def runs_table(runs) -> None:
    on_slurm = any(r.get("launcher") == "slurm" for r in runs)
    grids = any(r.get("grid") for r in runs)
    early = any(r.get("stopped_early") for r in runs)
    rows = []
    for r in runs:
        row = {"run": r["run_id"], "label": r.get("label") or r.get("method"), "state": r.get("state")}
        if grids:  # which grid job a run trains in (cancelling the grid stops all of its runs)
            row["grid"] = r.get("grid")
        if on_slurm:  # right after the state: a pending job says why it waits
            row["slurm job"] = r.get("job_id")
            row["node"] = r.get("node")
            row["slurm"] = (f"{r.get('slurm_state')}" + (f" ({r['slurm_reason']})" if r.get("slurm_reason") else "")
                            if r.get("job_id") and r.get("state") in ACTIVE else None)
        row.update({
            # succeeded is done, whatever the last progress said (a grid whose runs all stopped early)
            "progress": 1.0 if r.get("state") == "succeeded" else float((r.get("progress") or {}).get("fraction") or 0.0),
            "step": (r.get("progress") or {}).get("done"), "started": r.get("started") or r.get("launched"),
            "error": (r.get("error") or "").splitlines()[0] if r.get("error") else "",
        })
        if early:  # why it ended before its last step, and which step's model it kept
            row["stopped early"] = (r.get("stopped_early") or {}).get("reason") or ""
        rows.append(row)
    table = pd.DataFrame(rows)
    st.dataframe(table, hide_index=True, use_container_width=True, key="runs_table",
                 column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0)})
    if runs.skipped:
        st.caption(f"Skipped {runs.skipped} folder(s) that are not runs: {', '.join(runs.skipped_names[:5])}")


st.title("Train")
jm = manager()
try:
    runs = jm.list()
except OSError as err:
    st.error(f"Cannot read the runs folder {jm.root}: {err}")
    st.stop()
runs_by_id = {r["run_id"]: r for r in runs}
user_cfg, user_text = users_field()

# ---------------------------------------------------------------- the lessons, one click (always offered)
LESSONS_TEXT = (
    "**The lessons in one click.** *Two opposed users* (helpfulness vs honesty): a traditional reward "
    "model can only average them and stays near chance for both; the personalized (VPL) model with "
    "adaptive sampling reads each user from a few examples and serves both. About 15 seconds once "
    "`scripts/setup.sh` has warmed its embeddings (about 90 without). "
    "But the study trains only on the pairs the two users disagree on, so the model learns the honesty "
    "user as *the opposite of the helpfulness user*, not as someone who values honesty: scored on all of "
    "that user's pairs of new questions it is near chance, and it rewards unhelpful answers. The "
    "`personal` preset trains on every pair each user has a preference on (the *all pairs* and *new "
    "people* columns on the Results page measure this).\n\n"
    "*Four users* (one per aspect): the study's VPL model only appends who the user is (z) to the "
    "response embedding, so it stalls at the traditional model's level, and its *z shuffled* accuracy "
    "(the same questions read with another user's examples) equals its accuracy: it ignores z. "
    "PrefLens's `personal` preset lets z multiply features of the response and reads a person as a "
    "blend of the trained tastes, weighed by how well each blend explains their examples, so blends and "
    "the uniform person are read too, not forced onto one trained user (the dashed *per-user probe* "
    "line is what a linear head trained on one user alone reaches). The three runs train as one grid job "
    "and each stops once its validation loss stops improving, keeping its best evaluation: about a minute "
    "on a 2-core CPU.")
if not runs:
    st.info(LESSONS_TEXT)
else:
    with st.expander("About the lessons"):
        st.markdown(LESSONS_TEXT)
c1, c2 = st.columns(2)
if c1.button("Run the two-opposed lesson", type="primary" if not runs else "secondary", key="lesson"):
    ids = submit_all(jm, ["traditional", "vpl-adaptive"], [0], {"users": "two-opposed", **QUICK})
    st.query_params["runs"] = ",".join(ids)
    st.rerun()
if c2.button("Run the four-users lesson", key="lesson4"):
    # one process: the three runs share the data and features, and step side by side
    st.query_params["runs"] = submit_grid(jm, ["traditional", "vpl", "personal"], [0], LESSON_FOUR_USERS)
    st.rerun()

# ---------------------------------------------------------------- launch
with st.expander("Launch runs", expanded=not runs):
    st.markdown(f"Users: {user_text} (change them on the Users page).")
    c1, c2, c3 = st.columns(3)
    methods = c1.multiselect("Method(s)", list(PRESETS), default=["traditional", "vpl-adaptive"], key="methods")
    seeds_text = c2.text_input("Seed(s)", "0", key="seeds", help="e.g. 0 or 0,1,2 or 0-4")
    size = c3.radio("Size", ["Quick (400 questions)", "Study preset (1500 questions)"], key="size")
    steps = st.number_input("Steps", 1, 20000, 60 if size.startswith("Quick") else 400, key="steps")
    as_grid = st.checkbox("Train as one grid (one process, faster)", value=True, key="as_grid",
                          help="Every method x seed trains in one process that shares the data and the frozen "
                               "encoder and steps the models together; each still gets its own run, curves and "
                               "cancel, with the same results as alone. Off: one job per run, one at a time.")
    launcher, slurm_params = launcher_fields()
    if st.button("Launch", key="launch", disabled=not methods):
        try:
            extra = {**user_cfg, "steps": int(steps)}
            if size.startswith("Quick"):
                extra.update(corpus_prompts=QUICK["corpus_prompts"], eval_every=max(1, int(steps) // 12))
            seeds = parse_seeds(seeds_text)
            ranks = (slurm_params or {}).get("nodes", 1) * (slurm_params or {}).get("tasks_per_node", 1)
            if as_grid and len(methods) * len(seeds) > 1 and ranks == 1:
                ids = [submit_grid(jm, methods, seeds, extra, launcher, slurm_params)]
            else:
                ids = submit_all(jm, methods, seeds, extra, launcher, slurm_params)
        except (ConfigError, ValueError) as err:
            st.error(f"Not launched: {err}")
        else:
            st.query_params["runs"] = ",".join(ids)
            st.rerun()

if not runs:
    st.stop()

url_runs = [r for r in (st.query_params.get("runs") or "").split(",") if r in runs_by_id]
default = url_runs or [r["run_id"] for r in runs[:2]]
shown = st.multiselect("Runs to show (overlay to compare)", list(runs_by_id), default=default, key="shown",
                       format_func=lambda rid: run_label(runs_by_id[rid]))
c1, c2, c3 = st.columns([2, 2, 1])
alpha = c1.slider("Smoothing (EMA)", 0.0, 0.95, 0.0, 0.05, key="smooth")
view = c2.radio("Many users (more than 8)", ["Group means with min-max band", "Every user"], key="user_view",
                horizontal=True, help="For runs with many users: one line per group (the mean of its users, "
                "shaded from its lowest to its highest user), or a thin line per user.")
show_refs = c3.toggle("Reference lines", value=True, key="refs",
                      help="Computed at step 0 on the run's own test pairs: a model using the global mean weights, "
                           "the group mean weights, and a linear probe per user on the frozen embeddings.")

active_ids = [r["run_id"] for r in runs if r["state"] in ACTIVE]
if active_ids:
    c1, c2 = st.columns([3, 1])
    victim = c1.selectbox("Active run", active_ids, key="cancel_pick",
                          format_func=lambda rid: run_label(runs_by_id[rid]))
    if c2.button("Cancel run", key="cancel"):
        what = "every run of the grid" if runs_by_id[victim].get("members") is not None else "the run"
        with st.spinner(f"Stopping {what} (checkpointed first)…"):
            jm.cancel(victim)  # a grid's member: only that run stops, the others train on
        st.rerun()

watching = any(r["state"] in ACTIVE for r in runs)


@st.fragment(run_every=REFRESH_S if watching else None)
def live():
    fresh_list = jm.list()
    fresh = {r["run_id"]: r for r in fresh_list}
    runs_table(fresh_list)
    if {r: v["state"] for r, v in fresh.items()} != {r: v["state"] for r, v in runs_by_id.items()}:
        st.rerun()  # a run changed state or appeared (a grid's members): refresh the whole page (cancel list, refresh policy)
    if not shown:
        return
    drawn = with_members(shown, fresh)
    states = ", ".join(f"{fresh.get(r, {}).get('label')}: **{fresh.get(r, {}).get('state')}** "
                       f"({(fresh.get(r, {}).get('progress') or {}).get('done', 0)}/"
                       f"{(fresh.get(r, {}).get('progress') or {}).get('total', '?')})"
                       + (f", stopped early: {stop_text(fresh[r]['stopped_early'])}"
                          if isinstance(fresh.get(r, {}).get("stopped_early"), dict) else "") for r in drawn)
    if states:
        st.markdown(states)
    acc, loss, notes = curves(drawn, fresh, alpha, "users" if view == "Every user" else "groups", show_refs)
    st.plotly_chart(acc, key="train_accuracy", use_container_width=True)
    st.plotly_chart(loss, key="train_loss", use_container_width=True)
    for n in notes:
        st.caption(n)


live()
if shown:
    pick = st.selectbox("Log of", shown, key="log_pick")
    with st.expander("Log tail"):
        st.code(jm.log(pick, 60) or "(empty)", language=None)
        err = runs_by_id[pick].get("error")
        if err:
            st.error(err)
