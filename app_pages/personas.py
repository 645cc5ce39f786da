"""Personas: user stories, LLM-judge simulation runs, position bias, similarity and neighbour graphs."""

from __future__ import annotations

import hashlib

import networkx as nx
import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from core.personas import analysis, parse_stories
from core.personas.humans import HumansError, load_output
from core.personas.quality import verdict
from core.personas.runs_view import (
    cancel,
    checkpoints_root,
    launch,
    list_humans_outputs,
    list_persona_runs,
    load_run,
    persona_group_stats,
    refresh,
)
from core.personas.stories import default_stories, stories_to_json
from ui.graphs import neighbour_graph_figure, stored_layout_figure

st.title("Personas: simulated users from life stories")
st.caption("An LLM judge plays each user story and picks between two responses (seed §5). Pairwise asks A/B in "
           "both orders, scoring grades each response on four dimensions; the higher total wins.")

qp = st.query_params
ROOT = checkpoints_root()


def _int_param(name: str, default: int) -> int:
    try:
        return int(qp.get(name, default))
    except (TypeError, ValueError):
        return default


tab_stories, tab_run, tab_results = st.tabs(["Stories", "Run", "Results"])

# ---------------------------------------------------------------- stories
with tab_stories:
    st.write("36 stories ship with PrefLens, with deliberate near-neighbours (two police officers, two "
             "programmers, a singer and a rapper, ...). Edit them here or upload your own (JSON or CSV with "
             "name, occupation, story).")
    up = st.file_uploader("Upload stories", type=["json", "csv"], key="stories_upload")
    stories, problem = default_stories(), None
    if up is not None:
        try:
            stories = parse_stories(up.getvalue().decode("utf-8"), "csv" if up.name.lower().endswith(".csv") else "json",
                                    source=up.name)
        except ValueError as e:
            problem = str(e)
            st.error(problem)
    df_stories = pd.DataFrame([s.to_dict() for s in stories])
    edited = st.data_editor(df_stories, num_rows="dynamic", key="stories_editor", width="stretch")
    try:
        stories = parse_stories(edited.fillna("").to_json(orient="records"), "json", source="edited stories")
        st.caption(f"{len(stories)} valid stories.")
    except ValueError as e:
        problem = str(e)
        st.error(problem)
    st.download_button("Download stories (JSON)", stories_to_json(stories), "stories.json", "application/json")

# ---------------------------------------------------------------- run
with tab_run:
    c1, c2, c3, c4 = st.columns(4)
    mode = c1.radio("Mode", ["scoring", "pairwise"], index=0 if qp.get("mode", "scoring") == "scoring" else 1,
                    key="mode", help="scoring removes most position bias; pairwise shows it")
    n_questions = c2.number_input("Questions", 1, 1000, _int_param("nq", 10), key="nq")
    n_stories = c3.number_input("Stories (first N)", 1, max(1, len(stories)), min(_int_param("ns", 6), len(stories)),
                                key="ns")
    seed = c4.number_input("Seed", 0, 10**6, _int_param("seed", 0), key="seed")
    judge = st.text_input("Judge", qp.get("judge", "default"), key="judge",
                          help="'default' = bundled SmolLM2-135M (weak!), 'bundled-gemma3' = Gemma 3 270M base (Gemma terms), "
                               "a model id / folder / .gguf path, or "
                               "'openai[:model]' with PREFLENS_JUDGE_BASE_URL / _MODEL / _API_KEY in the environment")
    qp.update({"mode": mode, "nq": str(n_questions), "ns": str(n_stories), "seed": str(seed), "judge": judge})
    st.caption(f"{n_stories} stories x {n_questions} questions = {n_stories * n_questions} items; runs as a "
               "background job writing to its run folder (resumable).")
    if st.button("Launch run", type="primary", disabled=problem is not None, key="launch"):
        cfg = {"mode": mode, "n_questions": int(n_questions), "n_stories": int(n_stories), "seed": int(seed),
               "judge": judge, "stories": "default"}
        if up is not None or not edited.equals(df_stories):
            ROOT.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256(stories_to_json(stories).encode()).hexdigest()[:12]
            path = ROOT / f"stories-{digest}.json"
            path.write_text(stories_to_json(stories))
            cfg["stories"] = str(path)
        try:
            run_id = launch(cfg, ROOT)
            st.success(f"Started {run_id}; follow it in Results.")
            qp["run"] = run_id
        except ValueError as e:
            st.error(str(e))

# ---------------------------------------------------------------- results
runs = list_persona_runs(ROOT)


def _label(r):
    return f"{r['mode']} · {r['run_id']}"  # no state or progress: a changing label drops the browser's choice


def _choice_bars(dist: pd.DataFrame, title: str, key: str):
    colours = {"first": "#1f77b4", "second": "#ff7f0e", "tie": "#9467bd", "inconsistent": "#d62728", "invalid": "#bbbbbb"}
    fig = go.Figure([go.Bar(x=dist.index.astype(str), y=dist[c], name=c, marker_color=colours[c]) for c in dist.columns])
    fig.update_layout(barmode="stack", title=title, yaxis_title="share", height=380, xaxis_tickangle=-45)
    st.plotly_chart(fig, key=key)


with tab_results:
    if not runs:
        st.info(f"No persona runs yet in {ROOT}/. Launch one in the Run tab.")
    else:
        ids = [r["run_id"] for r in runs]
        sel = qp.get("run") if qp.get("run") in ids else ids[0]
        run_id = st.selectbox("Run", ids, index=ids.index(sel), format_func=lambda i: _label(runs[ids.index(i)]),
                              key="run_select")
        qp["run"] = run_id
        meta = runs[ids.index(run_id)]
        data = load_run(meta["path"])

        @st.fragment(run_every=2.0 if meta["state"] in ("queued", "running") else None)
        def _progress():
            refresh(ROOT)
            d = load_run(meta["path"])
            s = d["status"]
            prog = s.get("progress") or {}
            st.progress(float(prog.get("fraction", 0.0)), text=f"{s.get('state', 'queued')}: "
                        f"{prog.get('done', 0)}/{prog.get('total', '?')} items")
            if s.get("error"):
                st.error(s["error"])
            if s.get("state") == "running" and st.button("Cancel run", key="cancel"):
                cancel(meta["path"])
            if s.get("state") != meta["state"] or prog.get("done", 0) != meta["done"]:
                st.rerun()  # new results or a final state: redraw the whole page (charts are live while it runs)

        _progress()
        q = data["quality"]
        if q:
            rhos = ", ".join(f"{k}: {'n/a' if v is None else f'{v:+.2f}'}" for k, v in q["spearman"].items())
            msg = f"Judge-quality probe ({q['judge']}, {q['method']}, {q['n_responses']} responses): {rhos}. {verdict(q)}"
            (st.warning if "barely" in verdict(q) or "no usable" in verdict(q) else st.info)(msg)
        records = data["records"]
        if not records:
            st.info("No scored items yet.")
        else:
            df = analysis.results_frame(records)
            share = analysis.preferred_share(df)
            m1, m2, m3 = st.columns(3)
            m1.metric("Items scored", len(df))
            m2.metric("Chose the dataset's preferred", f"{share['share']:.0%}" if share["n_valid"] else "n/a")
            m3.metric("Valid choices", f"{share['n_valid']}/{share['n_items']}")
            if data["config"].get("mode") == "pairwise":
                pb = analysis.position_bias(records)
                st.write(f"**Position bias**: the response shown first was named in "
                         f"{pb['share_first_position']:.0%} of {pb['valid_answers']} valid answers (no bias = 50%).")
            _choice_bars(analysis.choice_distribution(df, "name"), "Per-user choices (first/second in base order)", "per_user")
            _choice_bars(analysis.choice_distribution(df, "qid"), "Per-question choices", "per_question")
            pq = share["per_question"]
            if len(pq):
                fig = go.Figure([go.Bar(x=pq.index, y=pq["chose_preferred"], name="chose dataset's preferred",
                                        marker_color="#2ca02c"),
                                 go.Bar(x=pq.index, y=-pq["chose_other"], name="chose the other", marker_color="#d62728")])
                fig.update_layout(barmode="relative", title="Users per question siding with / against the dataset",
                                  height=340)
                st.plotly_chart(fig, key="preferred")
            mat, users, _ = analysis.preference_matrix(df)
            if len(users) >= 2:
                sim = analysis.cosine_similarity(mat)
                info = df.drop_duplicates("user").set_index("user").loc[users]
                order = analysis.occupation_order(list(info["name"]), list(info["occupation"]), list(info["group"]))
                labels = [f"{info['occupation'].iloc[i]} · {info['name'].iloc[i]}" for i in order]
                fig = px.imshow(sim[np.ix_(order, order)], x=labels, y=labels, color_continuous_scale="Blues",
                                zmin=-1, zmax=1, title="User-user cosine similarity (ordered by occupation)")
                fig.update_layout(height=600)
                st.plotly_chart(fig, key="similarity")
                k = st.slider("Mutual top-k neighbours", 1, max(1, min(10, len(users) - 1)),
                              min(5, len(users) - 1), key="topk")
                g = analysis.mutual_top_k_graph(sim, k=k, labels=list(info["occupation"]))
                fig = neighbour_graph_figure(g, nx.spring_layout(g, seed=int(seed)),
                                             {i: info["occupation"].iloc[i] for i in g.nodes},
                                             {i: info["name"].iloc[i] for i in g.nodes},
                                             f"Mutual top-{k} neighbours (layout seed {seed})")
                st.plotly_chart(fig, key="graph")
                comps = analysis.components(g)
                st.write("**Connected components**: " + ("; ".join(
                    ", ".join(f"{info['name'].iloc[i]} ({info['occupation'].iloc[i]})" for i in c) for c in comps)
                    or "none (no mutual neighbours)"))
            with st.expander("Per-question view"):
                qid = st.selectbox("Question", sorted(df["qid"].unique()), key="qid")
                st.dataframe(pd.DataFrame([{k: r.get(k) for k in ("name", "occupation", "choice", "preferred", "answers",
                                                                   "gen_scores", "logit_scores", "raw")}
                                           for r in records if r["qid"] == qid]), key="qtable")
        if len(runs) >= 2:
            st.subheader("Pairwise vs scoring")
            picked = st.multiselect("Runs to compare", ids, default=ids[:2], key="compare")
            rows = []
            for rid in picked:
                recs = load_run(runs[ids.index(rid)]["path"])["records"]
                d = analysis.results_frame(recs)
                if d.empty:
                    continue
                counts = d["choice"].value_counts(normalize=True)
                pb = analysis.position_bias(recs)
                rows.append({"run": rid, "mode": runs[ids.index(rid)]["mode"], "items": len(d),
                             **{c: round(float(counts.get(c, 0.0)), 3) for c in analysis.CATEGORIES},
                             "named first position": pb["share_first_position"],
                             "chose dataset's preferred": analysis.preferred_share(d)["share"]})
            if rows:
                cmp = pd.DataFrame(rows).set_index("run")
                st.dataframe(cmp, key="compare_table")
                fig = go.Figure([go.Bar(x=cmp.index, y=cmp[c], name=c) for c in analysis.CATEGORIES])
                fig.update_layout(barmode="stack", title="Choice categories per run (position bias shows as "
                                  "'inconsistent')", height=320)
                st.plotly_chart(fig, key="compare_chart")
        if data["torn_lines"]:
            st.caption(f"{data['torn_lines']} torn line(s) skipped in results.jsonl.")


# ---------------------------------------------------------------- real people
def _num(x, fmt=".3f"):
    return "n/a" if x is None else format(x, fmt)


with tab_results:
    st.divider()
    st.subheader("Real human ratings beside the personas")
    st.caption("Folders written by `python -m core.personas.humans` (see docs/personas.md): the same similarity analyses "
               f"on real people's ratings. Listed from {ROOT}/ and its humans/ subfolder; or enter a folder's path.")
    outs = list_humans_outputs(ROOT)
    names = [o["name"] for o in outs]
    hc1, hc2 = st.columns(2)
    picked = None
    if names:
        want = qp.get("humans")
        picked = hc1.selectbox("Humans output", names, index=names.index(want) if want in names else 0,
                               key="humans_select")
        qp["humans"] = picked
    typed = hc2.text_input("Or a folder path", "", key="humans_path", placeholder="/data/movielens-humans")
    folder = typed.strip() or (outs[names.index(picked)]["path"] if picked else None)
    if folder is None:
        st.info(f"No humans output under {ROOT}/ yet. Make one with `python -m core.personas.humans --ratings FILE "
                f"--user COL --item COL --rating COL --group COL --out {ROOT}/humans/NAME`.")
    else:
        try:
            h = load_output(folder)
        except HumansError as e:
            st.error(str(e))
        else:
            hs, a = h["summary"], h["summary"].get("args", {})
            c = st.columns(4)
            c[0].metric("People", hs["users"])
            c[1].metric("Items", hs["items"])
            c[2].metric("Ratings", f"{hs['ratings']:,}")
            c[3].metric(f"Pairs sharing ≥ {a.get('min_overlap')} items", f"{hs['pairs_meeting_overlap']:,}")
            c = st.columns(4)
            c[0].metric(f"Mean similarity ({a.get('metric')})", _num(hs.get("mean_similarity")))
            c[1].metric("Within-group similarity", _num(hs["within_mean"]))
            c[2].metric("Between-group similarity", _num(hs["between_mean"]))
            c[3].metric(f"Permutation p ({hs['permutations']} shuffles)", _num(hs["p_value"], ".4f"))
            if hs.get("group_note"):
                st.caption(f"Group test: {hs['group_note']}.")
            if hs["isolated_users_count"]:
                first = hs["isolated_users"][0]
                st.warning(f"{hs['isolated_users_count']} people have no similarity with anyone and sit alone in the "
                           f"graph, e.g. {first['user']}: {first['reason']}.")
            g = h["graph"]
            gmeta = g.graph or {}
            st.plotly_chart(stored_layout_figure(g, f"Mutual top-{gmeta.get('k', '?')} neighbours of "
                                                 f"{hs['users']} people by {hs.get('group_column') or 'group'} "
                                                 f"(layout seed {gmeta.get('layout_seed', '?')})"),
                            key="humans_graph")
            st.dataframe(h["groups"], key="humans_groups", hide_index=True)
            rows = [{"source": f"humans · {typed.strip() or picked}", "users": hs["users"], "groups": hs["groups"],
                     "within": hs["within_mean"], "between": hs["between_mean"], "p": hs["p_value"]}]
            if runs and data["records"]:
                ps = persona_group_stats(data["records"], permutations=1000, seed=int(seed))
                if ps:
                    rows.insert(0, {"source": f"personas · {run_id} (story groups)", "users": ps["users"],
                                    "groups": ps["groups"], "within": ps["within_mean"],
                                    "between": ps["between_mean"], "p": ps["p_value"]})
            st.write("**Side by side**: mean similarity within vs between groups, and the permutation p-value "
                     "(a small p: the groups are more alike inside than across).")
            st.dataframe(pd.DataFrame(rows).set_index("source"), key="humans_compare")
