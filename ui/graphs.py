"""Plotly figures of neighbour graphs, one style for persona runs and human-ratings outputs."""

from __future__ import annotations

import networkx as nx
import plotly.graph_objects as go

MAX_LABELLED_NODES = 60  # above this, names go to the hover text only


def neighbour_graph_figure(g: nx.Graph, pos: dict, group_of: dict, text_of: dict, title: str,
                           height: int = 520) -> go.Figure:
    """Grey edges, then one marker trace per group (so the legend names the groups and colours them).

    ``pos`` maps node -> (x, y); ``group_of`` and ``text_of`` map node -> its group and its label.
    Small graphs print each label above its node; larger ones keep labels in the hover text.
    """
    ex, ey = [], []
    for a, b in g.edges():
        ex += [pos[a][0], pos[b][0], None]
        ey += [pos[a][1], pos[b][1], None]
    fig = go.Figure([go.Scatter(x=ex, y=ey, mode="lines", line={"color": "#aaa"}, hoverinfo="skip",
                                showlegend=False)])
    labelled = len(g) <= MAX_LABELLED_NODES
    for group in sorted({str(group_of[n]) for n in g.nodes}):
        nodes = [n for n in g.nodes if str(group_of[n]) == group]
        text = [str(text_of[n]) for n in nodes]
        fig.add_trace(go.Scatter(x=[pos[n][0] for n in nodes], y=[pos[n][1] for n in nodes],
                                 mode="markers+text" if labelled else "markers", name=group, text=text,
                                 textposition="top center", hovertemplate="%{text}<extra>" + group + "</extra>",
                                 marker={"size": 12 if labelled else 8}))
    fig.update_layout(title=title, height=height, xaxis={"visible": False}, yaxis={"visible": False})
    return fig


def stored_layout_figure(g: nx.Graph, title: str, height: int = 560) -> go.Figure:
    """A graph whose nodes carry x, y, group and user attributes (core.personas.humans writes them)."""
    nodes = g.nodes
    return neighbour_graph_figure(g, {n: (nodes[n]["x"], nodes[n]["y"]) for n in nodes},
                                  {n: nodes[n].get("group", "") for n in nodes},
                                  {n: nodes[n].get("user", n) for n in nodes}, title, height)
