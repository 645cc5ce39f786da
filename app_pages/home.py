"""Home: the lesson at a glance, and where to go next."""

import plotly.graph_objects as go
import streamlit as st

from core.users.tastes import contested_pairs, preset
from ui.state import CORPUS_DEFAULTS, corpus

st.title("PrefLens")
st.markdown(
    "Reward models learn what people prefer. A standard one learns **one** taste for everyone, "
    "so when people want opposite things their votes cancel out. PrefLens shows that happening, "
    "and shows a *conditional* reward model that is told who the user is (by a few of their own "
    "choices) keep both tastes."
)

table = corpus(**CORPUS_DEFAULTS)
W = preset("two-opposed")
pairs, prefers_first = contested_pairs(table, W)
st.subheader("Two users, one question, opposite answers")
st.markdown(
    "**Ada** cares only about *helpfulness*; **Ben** only about *honesty* (calibrated confidence). "
    f"On the offline corpus they disagree on **{len(pairs):,}** of {len(table) * 6:,} response pairs."
)
pick = st.slider("Example", 0, min(len(pairs), 200) - 1, 0, key="home_example")
q, i, j = (int(x) for x in pairs[pick])
st.caption(table.prompts[q])
left, right = st.columns(2)
for col, c, label in ((left, i, "A"), (right, j, "B")):
    with col:
        fans = [n for n, u in (("Ada", 0), ("Ben", 1)) if prefers_first[u, pick] == (c == i)]
        st.markdown(f"**Response {label}**: preferred by **{fans[0]}**")
        st.text(table.responses[q][c])
        st.caption("ratings (help, honest, follow, truth): " + ", ".join(f"{x:.0f}" for x in table.ratings[q, c]))

st.subheader("One reward model for both must fail one of them")
st.markdown(
    "On these pairs, whatever a single reward model ranks first, it is right for one user and wrong "
    "for the other, so the best it can do is 50% each on average. A model that knows who is asking "
    "can be right for both."
)
fig = go.Figure()
for name, acc in (("Ada", [1.0, 0.0, 0.5, 1.0]), ("Ben", [0.0, 1.0, 0.5, 1.0])):
    fig.add_bar(name=name, x=["sides with Ada", "sides with Ben", "best compromise", "conditional (ideal)"], y=acc)
fig.update_layout(barmode="group", yaxis_title="accuracy on contested pairs", yaxis_range=[0, 1.05], height=320)
st.plotly_chart(fig, key="home_lesson")

st.subheader("Where to go next")
for path, text in (("app_pages/users.py", "Design users and see where they disagree"),
                   ("app_pages/train.py", "Train a traditional and a personalized reward model and watch them"),
                   ("app_pages/personas.py", "Ask an LLM to role-play personas")):
    try:
        st.page_link(path, label=text)
    except Exception:  # page not routed in this build (e.g. under AppTest of a single page)
        st.markdown(f"- {text}")
