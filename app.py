"""PrefLens: `streamlit run app.py`. Routes the pages; the pages live in pages/, the logic in core/."""

from pathlib import Path

import streamlit as st

st.set_page_config(page_title="PrefLens", page_icon="🔍", layout="wide")

HERE = Path(__file__).parent
PAGES = [
    ("pages/home.py", "Home", "🏠"),
    ("pages/users.py", "Users", "🧑‍🤝‍🧑"),
    ("pages/train.py", "Train", "🏋️"),
    ("pages/latent.py", "Latent space", "🌌"),
    ("pages/results.py", "Results", "📊"),
    ("pages/personas.py", "Personas", "🎭"),
]
pages = [st.Page(str(HERE / f), title=t, icon=i, default=(t == "Home"), url_path=Path(f).stem)
         for f, t, i in PAGES if (HERE / f).exists()]
page = st.navigation(pages)

with st.sidebar:
    st.caption("PrefLens: one reward model, many users. Conditional reward modeling you can watch learn.")
page.run()
