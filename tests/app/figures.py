"""Reading plotly figures back out of an AppTest run."""

import base64
import json

import numpy as np


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
