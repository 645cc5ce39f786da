"""Results: finished runs grouped by method and setting (users, data, pairs, encoder; the study's
Tables 2-4 and Figure 11), sweeps, CSV."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.experiments.compare import run_row, summarize
from core.jobs.manager import JobManager, default_root
from core.training.config import PRESETS, ConfigError
from ui.state import current_users

st.title("Results")
jm = JobManager(default_root())
runs = jm.list()
include = st.multiselect("Include runs that are", ["succeeded", "cancelled", "failed"], default=["succeeded"],
                         key="results_states")

rows, unreadable, torn = [], [], 0
for r in runs:  # a grid job's members are runs of the list (id <grid id>.<name>), with the state the job system judged
    if r.get("kind", "train") not in ("train", "fewshot") or r["state"] not in include:
        continue
    try:
        row = run_row(r["path"])
    except Exception:  # noqa: BLE001 - a folder we cannot read is reported, never fatal
        row = None
    if row is None or row.get("method") in (None, "None"):
        unreadable.append(r["run_id"])
        continue
    torn += row.get("skipped_lines", 0) or 0
    row["run_id"] = r["run_id"]
    rows.append(row)

# comparison folders written by `python -m core.experiments compare --out <root>/<name>` (and a study's runs)
# land here too; a grid job's members were listed above
listed = {Path(r["path"]).resolve() for r in runs}
for path in sorted(Path(jm.root).glob("*/runs/*")):
    if path.resolve() in listed:
        continue
    row = run_row(path) if path.is_dir() else None
    if row is None:
        unreadable.append(path.name)
    elif row["state"] in include:
        row["run_id"] = f"{path.parent.parent.name}/{row['run_id']}"
        rows.append(row)

notes = []
if runs.skipped:
    notes.append(f"{runs.skipped} folder(s) that are not runs")
if unreadable:
    notes.append(f"{len(unreadable)} run(s) without readable metrics ({', '.join(unreadable[:4])})")
if torn:
    notes.append(f"{torn} unreadable metrics line(s)")
if notes:
    st.caption("Skipped: " + "; ".join(notes) + ".")

SETTING = ("users", "data", "pairs", "encoder")  # with the method: what makes two runs comparable
for row in rows:  # runs whose config does not say (few-shot runs from before it did) form their own group
    for c in SETTING:
        if row.get(c) is None:
            row[c] = "unknown"

if not rows:
    st.info("No finished training runs yet. Launch a seed sweep below or use the Train page.")
else:
    st.caption("Runs are compared like with like: one row and one bar per method **and** user set, data, pair "
               "filter and encoder; the seeds of one setting are averaged.")
    f1, f2, f3 = st.columns(3)
    picked = {}
    for col, c, label in ((f1, "users", "User sets"), (f2, "data", "Data"), (f3, "encoder", "Encoders")):
        options = list(dict.fromkeys(str(r[c]) for r in rows))
        picked[c] = col.multiselect(label, options, default=options, key=f"results_filter_{c}")
    rows = [r for r in rows if all(str(r[c]) in picked[c] for c in picked)]
    if not rows:
        st.info("No run matches the filters above.")


def labels(df: pd.DataFrame, dims=SETTING) -> tuple[list[str], list[str]]:
    """A bar label per row: the method plus each of ``dims`` that differs between rows (the ones shared by all
    rows come back second, as 'name: value' for a caption)."""
    vary = [c for c in dims if df[c].astype(str).nunique() > 1]
    same = [f"{c} {df[c].iloc[0]}" for c in dims if c not in vary and len(df)]
    return [" · ".join(str(r[c]) for c in ("method", *vary)) for _, r in df.iterrows()], same


PEOPLE_HELP = {
    "all_pairs_accuracy": ("all pairs", "The run's own users scored on every pair with a strict preference on the "
                           "test questions (not only the contested ones), each user read from 8 of their own "
                           "choices. Blank for runs recorded before this was measured."),
    "new_users_accuracy": ("new people", "People outside training: one-hot tastes, 50/50 blends, the uniform "
                           "user, Dirichlet draws, scored on every strict pair of the test questions, each read "
                           "from 8 of their own choices. Beside it, the traditional model's figure on the same "
                           "people and pairs is the baseline."),
    "new_users_traditional": ("new people: traditional", "The traditional model's new-people figure in the same "
                              "setting (users, data, pairs, encoder): the baseline a personalized model must beat."),
    "new_users_min": ("worst new person", "The lowest accuracy among the people outside training (mean over runs)."),
    "best_of_16": ("best of 16", "Share of the oracle's gain over a random pick when the model picks the best of 16 "
                   "fresh answers for each person outside training, judged by that person's true taste "
                   "(`python -m core.reward best-of-n --save`; blank where not measured)."),
    "best_of_16_traditional": ("best of 16: traditional", "The traditional twin's share on the same people and "
                               "answers, measured in the same command."),
}

if rows:
    summary = pd.DataFrame(summarize(rows))
    # the settings side by side (in order of first appearance), so that a user set's bars stand together
    first = {k: i for i, k in enumerate(dict.fromkeys(summary[list(SETTING)].astype(str).apply(tuple, axis=1)))}
    summary = summary.iloc[summary[list(SETTING)].astype(str).apply(tuple, axis=1).map(first).argsort(kind="stable")]
    summary = summary.reset_index(drop=True)
    runs_df = pd.DataFrame(rows)
    summary["label"], same = labels(summary)
    key = dict(zip(summary[list(SETTING) + ["method"]].astype(str).apply(tuple, axis=1), summary["label"],
                   strict=True))
    runs_df["label"] = [key[t] for t in runs_df[list(SETTING) + ["method"]].astype(str).apply(tuple, axis=1)]
    if "new_users_accuracy" in summary:
        # beside each row, the traditional model's figure on the same people and pairs: same users, data and
        # encoder (the people and the test questions do not depend on the training pairs; the same pair
        # filter is preferred where there is one)
        trad = summary[(summary["method"] == "traditional") & summary["new_users_accuracy"].notna()]

        def baseline(r):
            same = trad[(trad["users"] == r["users"]) & (trad["data"] == r["data"]) & (trad["encoder"] == r["encoder"])]
            same = same[same["pairs"] == r["pairs"]] if (same["pairs"] == r["pairs"]).any() else same
            return None if r["method"] == "traditional" or same.empty else float(same["new_users_accuracy"].iloc[0])

        summary["new_users_traditional"] = [baseline(r) for _, r in summary.iterrows()]

    def rounded(df: pd.DataFrame) -> pd.DataFrame:
        """For display only (the CSV downloads keep full precision): seconds to 0.1, the rest to 0.001."""
        secs = {c: 1 for c in df.columns if c.endswith("_s")}
        return df.round(secs).round(3)

    show = rounded(summary)
    show["accuracy"] = [f"{m:.3f} ± {s:.3f}" if m is not None and pd.notna(m) else "n/a"
                        for m, s in zip(summary["accuracy_mean"], summary["accuracy_std"], strict=True)]
    st.subheader("By method and setting")
    refs = [c for c in ("z_shuffled_accuracy", "fresh_demos_accuracy", "ref_global", "ref_group", "ref_probe")
            if c in show]
    people = [c for c in ("all_pairs_accuracy", "new_users_accuracy", "new_users_traditional", "new_users_min",
                          "best_of_16", "best_of_16_traditional") if c in show]
    early = ["stopped_early"] if "stopped_early" in show and show["stopped_early"].fillna(0).any() else []
    st.dataframe(show[["method", *SETTING, "runs", *early, "accuracy", *people, "converged_share", "steps_to_converge",
                       "epochs_to_converge", "wall_to_converge_s", "wall_s", *refs]], hide_index=True,
                 use_container_width=True, key="results_summary",
                 column_config={"converged_share": st.column_config.ProgressColumn(
                     "converged share", min_value=0.0, max_value=1.0, format="%.2f"),
                     "users": st.column_config.TextColumn("users", help="The user set the runs trained on."),
                     "data": st.column_config.TextColumn("data", help="The questions: the offline corpus (questions, "
                                                         "seed, and signal / rating noise when not the defaults) "
                                                         "or the UltraFeedback file / hub id."),
                     "pairs": st.column_config.TextColumn("pairs", help="Which pairs the runs trained on: "
                                                          "contested (the users disagree; the study's filter), "
                                                          "contested plus a share of the other pairs (training only: "
                                                          "accuracy is still read on the contested test pairs), or "
                                                          "all pairs (training and test)."),
                     "encoder": st.column_config.TextColumn("encoder", help="The text encoder and how it trained "
                                                            "(or the few-shot judge)."),
                     "stopped_early": st.column_config.NumberColumn(
                         "stopped early", format="%d", help="How many of the runs stopped once their validation loss "
                         "stopped improving (early stopping) and kept their best evaluation's model; the others "
                         "trained every step."),
                     **{c: st.column_config.NumberColumn(name, format="%.3f", help=text)
                        for c, (name, text) in PEOPLE_HELP.items()},
                     "z_shuffled_accuracy": st.column_config.NumberColumn(
                         "z shuffled", format="%.3f", help="Accuracy when each test pair is read with another "
                         "user's demonstrations; close to accuracy = the model ignores who the user is."),
                     "fresh_demos_accuracy": st.column_config.NumberColumn(
                         "fresh demos", format="%.3f", help="Accuracy when each test pair is read with the same "
                         "user's demonstrations from pairs outside the training pool; far below accuracy = "
                         "the model recognised the pool instead of reading the user's taste."),
                     "ref_global": st.column_config.NumberColumn(
                         "ref: global", format="%.3f", help="Mean of all users' weights on the true ratings."),
                     "ref_group": st.column_config.NumberColumn(
                         "ref: group", format="%.3f", help="Each user's group-mean weights on the true ratings."),
                     "ref_probe": st.column_config.NumberColumn(
                         "ref: probe", format="%.3f", help="A linear probe per user on the frozen embeddings.")})
    if people:
        st.caption("**all pairs**: every pair with a strict preference on the test questions, each user read from "
                   "8 of their own choices. **new people**: people outside training (one-hot tastes, 50/50 "
                   "blends, the uniform user, Dirichlet draws), scored the same way; beside it the traditional "
                   "model's figure on the same people and pairs is the baseline. Blank: runs recorded before "
                   "these were measured.")
    if early:
        st.caption("**stopped early**: runs that stopped once their validation loss (held-out training questions, "
                   "not the test questions) stopped improving; each keeps the model of its best evaluation, and "
                   "its figures are that model's. The runs table below gives the step each stopped at.")
    if refs:
        st.caption("Reference columns are computed at step 0 on each run's own test pairs (means over its runs): "
                   "what one global taste, each user's group taste, and a per-user linear reader of the frozen "
                   "features reach. A personalized model should sit between global and probe.")
    bar = go.Figure(go.Bar(x=summary["label"], y=summary["accuracy_mean"],
                           error_y={"type": "data", "array": summary["accuracy_std"].fillna(0).tolist()},
                           text=[f"n={n}" for n in summary["runs"]], name="mean accuracy"))
    bar.update_layout(title="Final mean per-user accuracy (± std over seeds)", yaxis_range=[0, 1.02],
                      height=340, margin={"t": 40})
    bar.add_hline(y=0.5, line_dash="dot", line_color="grey")
    st.plotly_chart(bar, key="results_accuracy", use_container_width=True)
    if same:
        st.caption("Every bar: " + "; ".join(same) + ".")

    # the study's Figure 6: few-shot and trained methods on the same users, data and pairs (one chart each)
    is_fs = summary["method"].str.startswith("fewshot-")
    facets = list(dict.fromkeys(tuple(r) for r in summary.loc[is_fs, ["users", "data", "pairs"]].itertuples(index=False)))
    if facets:
        st.subheader("Few-shot prompting vs trained reward models (the study's Figure 6)")
    for i, facet in enumerate(facets):
        part = summary[(summary[["users", "data", "pairs"]].apply(tuple, axis=1) == facet)].copy()
        part["k"] = [int(m.split("-k")[1]) if m.startswith("fewshot-") else 10**6 for m in part["method"]]
        part = part.sort_values("k", kind="stable")
        # the encoder only where two rows of one method differ in it (the judge is what few-shot means)
        enc = part.groupby("method")["encoder"].transform("nunique").gt(1)
        xs = [f"{m} · {e}" if twice else m for m, e, twice in zip(part["method"], part["encoder"], enc, strict=True)]
        fs = go.Figure(go.Bar(x=xs, y=part["accuracy_mean"],
                              error_y={"type": "data", "array": part["accuracy_std"].fillna(0).tolist()},
                              marker_color=["#9aa5b1" if m.startswith("fewshot-") else "#5b4bdb"
                                            for m in part["method"]]))
        ref = pd.Series(dtype=float)
        if "uniform_k0_accuracy" in runs_df:
            k0 = runs_df[(runs_df["method"] == "fewshot-k0")
                         & (runs_df[["users", "data", "pairs"]].apply(tuple, axis=1) == facet)]
            ref = k0["uniform_k0_accuracy"].dropna()
        if len(ref):
            fs.add_hline(y=float(ref.mean()), line_dash="dash", line_color="#d62728",
                         annotation_text="uniform user, no demonstrations")
        fs.update_layout(yaxis_range=[0, 1.02], yaxis_title="mean per-user accuracy", height=360, margin={"t": 20})
        if len(facets) > 1:
            st.markdown(f"users **{facet[0]}** · data **{facet[1]}** · pairs **{facet[2]}**")
        st.plotly_chart(fs, key="results_fewshot" if i == 0 else f"results_fewshot_{i}", use_container_width=True)
    if facets:
        st.caption("Grey: an instruction-tuned LM shown k of the user's own choices (no training), read from "
                   "its A/B probabilities in both orders. Purple: trained reward models. The dashed line is "
                   "the uniform user's accuracy with no demonstrations, today's one-size-fits-all reference.")

    ucols_all = [c for c in runs_df.columns if c.startswith("user_") and c.endswith("_accuracy")]
    if ucols_all:
        st.subheader("Per-user accuracy (mean over runs)")
    # user 0 of one user set is not user 0 of another: one chart per user set
    for i, (uset, part) in enumerate(runs_df.groupby("users", sort=False)):
        ucols = sorted([c for c in ucols_all if part[c].notna().any()],
                       key=lambda c: int(c.split("_")[1]) if c.split("_")[1].isdigit() else 0)
        if not ucols:
            continue
        per_user = part.groupby("label", sort=False)[ucols].mean().rename_axis("method")
        if runs_df["users"].nunique() > 1:
            st.markdown(f"users **{uset}**")
        fig = go.Figure()
        if len(ucols) <= 12:
            for label, vals in per_user.iterrows():
                fig.add_trace(go.Bar(x=[c.split("_")[1] for c in ucols], y=vals.tolist(), name=str(label)))
            fig.update_layout(barmode="group", xaxis_title="user", yaxis_title="accuracy")
        else:
            for label, vals in per_user.iterrows():
                fig.add_trace(go.Box(y=vals.tolist(), name=str(label), boxpoints="all"))
            fig.update_layout(yaxis_title="per-user accuracy")
        fig.update_layout(height=340, yaxis_range=[0, 1.02], margin={"t": 20})
        sfx = "" if i == 0 else f"_{i}"
        st.plotly_chart(fig, key=f"results_user_accuracy{sfx}", use_container_width=True)
        st.dataframe(rounded(per_user).rename(columns=lambda c: f"user {c.split('_')[1]}").reset_index(),
                     hide_index=True, key=f"results_user_table{sfx}")

    with st.expander(f"All {len(rows)} runs"):
        st.dataframe(rounded(runs_df.drop(columns="label")), hide_index=True, key="results_runs")
    c1, c2 = st.columns(2)
    c1.download_button("Download summary (CSV)", summary.drop(columns=["label", "new_users_traditional"], errors="ignore").to_csv(index=False),
                       "preflens-summary.csv", "text/csv", key="dl_summary")
    c2.download_button("Download runs (CSV)", runs_df.drop(columns="label").to_csv(index=False), "preflens-runs.csv",
                       "text/csv", key="dl_runs")

st.subheader("Launch a seed sweep")
name, useed, W = current_users()
with st.form("sweep"):
    methods = st.multiselect("Methods", list(PRESETS), default=["traditional", "vpl", "vpl-adaptive"])
    seeds = st.number_input("Seeds (0..N-1)", 1, 10, 3)
    quick = st.checkbox("Quick size (400 questions, 60 steps)", value=True)
    st.caption(f"Users: {name} ({len(W)} users), from the Users page.")
    go_ = st.form_submit_button("Queue the sweep")
if go_:
    users = {"users": name, "user_seed": int(useed)} if name != "custom" else {"users": W.tolist()}
    extra = {**users, **({"corpus_prompts": 400, "steps": 60, "eval_every": 5} if quick else {})}
    try:
        ids = [jm.submit({"preset": m, "seed": s, **extra}) for m in methods for s in range(int(seeds))]
    except (ConfigError, ValueError) as err:
        st.error(f"Not queued: {err}")
    else:
        st.success(f"Queued {len(ids)} run(s); they run one at a time. Watch them on the Train page.")

st.subheader("The study's own setting (SmolLM2 + LoRA)")
st.caption("The seed's grid with a decoder-only LM whose LoRA adapters train, as the study did with GPT-2: "
           "traditional, vpl and vpl-adaptive over seeds. `tiny` checks the pipeline on a CPU in a few minutes "
           "(its accuracies mean nothing); `full` is sized for one GPU. Its runs appear in the tables above.")
with st.form("study"):
    c1, c2, c3 = st.columns(3)
    size = c1.selectbox("Size", ["tiny", "full"], key="study_size")
    study_users = c2.selectbox("Users", ["two-opposed", "four-one-hot"], key="study_users")
    study_seeds = c3.number_input("Seeds (0..N-1)", 1, 5, 3, key="study_seeds")
    go_study = st.form_submit_button("Queue the study")
if go_study:
    try:
        sid = jm.submit({"kind": "study", "size": size, "users": study_users, "seeds": list(range(int(study_seeds)))})
    except ValueError as err:
        st.error(f"Not queued: {err}")
    else:
        st.success(f"Queued study run {sid}. Its progress shows on the Train page; its table lands here.")
