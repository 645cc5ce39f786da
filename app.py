"""PrefLens: `streamlit run app.py`. Routes the pages; the pages live in app_pages/, the logic in core/."""

from pathlib import Path

import streamlit as st

st.set_page_config(page_title="PrefLens", page_icon=":material/insights:", layout="wide")

HERE = Path(__file__).parent
PAGES = [
    ("app_pages/home.py", "Home", ":material/home:"),
    ("app_pages/users.py", "Users", ":material/group:"),
    ("app_pages/train.py", "Train", ":material/model_training:"),
    ("app_pages/latent.py", "Latent space", ":material/scatter_plot:"),
    ("app_pages/results.py", "Results", ":material/table_chart:"),
    ("app_pages/playground.py", "Playground", ":material/sports_esports:"),
    ("app_pages/personas.py", "Personas", ":material/theater_comedy:"),
]
pages = [st.Page(str(HERE / f), title=t, icon=i, default=(t == "Home"),
                 url_path="start" if t == "Home" else Path(f).stem) for f, t, i in PAGES if (HERE / f).exists()]
# The default page is served at "/" and its own url_path leads nowhere (/home used to end in Streamlit's
# "Page not found" dialog), so it reserves an unused name and a hidden alias at /home switches to it.
home = next(p for p in pages if p.title == "Home")
pages.append(st.Page(lambda: st.switch_page(home), title="Home", url_path="home", visibility="hidden"))
page = st.navigation(pages)

with st.sidebar:
    st.caption("PrefLens: one reward model, many users. Conditional reward modeling you can watch learn.")
page.run()
