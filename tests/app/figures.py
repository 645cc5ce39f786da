"""AppTest helpers: open a page of the app with URL state, and read plotly figures back out of a run."""

import base64
import json
from pathlib import Path

import numpy as np

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def open_page(page: str, timeout: float = 120, **qp):
    """Run the app, switch to ``page`` (e.g. 'app_pages/train.py') with query params ``qp``; the AppTest."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=timeout)
    for k, v in qp.items():
        at.query_params[k] = v
    at.run()
    at.switch_page(page)
    for k, v in qp.items():
        at.query_params[k] = v
    return at.run()


def figure(at, key: str) -> dict:
    """The JSON spec of the plotly chart with this widget key (fails the test if there is none)."""
    charts = [c for c in at.get("plotly_chart") if getattr(c, "key", None) == key]
    assert charts, f"no plotly chart with key {key!r}"
    return json.loads(charts[0].proto.spec)


def array(value) -> np.ndarray:
    """Plotly ships numpy arrays as base64 'bdata' with a dtype (and shape): decode either form."""
    if isinstance(value, dict) and "bdata" in value:
        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if shape:
            arr = arr.reshape([int(x) for x in str(shape).split(",")] if isinstance(shape, str) else shape)
        return arr
    return np.asarray(value)
