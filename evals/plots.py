"""Plots of scored runs (matplotlib, Agg backend): each function takes per-prompt tables and returns a Figure.

- ``kl_distribution``: per predictor, the distribution of per-prompt KL (box over quartiles, whiskers to the 5th/95th
  percentiles, every prompt as a dot, the mean as a diamond).
- ``kl_vs_context``: per-prompt KL against the prompt's context length in tokens, with the mean per length bin.
- ``calibration``: the probability the prediction gave the realized next token, q(x), against the probability the
  target gave it, p(x), averaged in bins of q (both axes log scale). A perfect predictor lies on the diagonal; points
  above it mean the prediction under-rates what happened relative to the target. Only the realized token's
  probability is stored per prompt, so this is calibration *relative to the target*, not a reliability diagram over
  all candidates.
- ``suite_bars``: mean KL per suite and predictor with the 95% bootstrap CI as error bars.
``png_bytes`` renders a figure; ``data_uri`` embeds it in a self-contained HTML page.
"""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # files only, no display: set before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def kl_distribution(per_prompt: dict[str, pd.DataFrame], *, title: str = "") -> Figure:
    labels = list(per_prompt)
    fig, ax = plt.subplots(figsize=(8, 0.7 * len(labels) + 1.6))
    data = [per_prompt[k]["kl_nats"].to_numpy() for k in labels]
    ax.boxplot(data, orientation="horizontal", tick_labels=labels, whis=(5, 95), showfliers=False,
               widths=0.5, medianprops={"color": "black"})
    rng = np.random.default_rng(0)  # jitter only: fixed so the picture is reproducible
    for i, d in enumerate(data):
        ax.scatter(d, i + 1 + rng.uniform(-0.18, 0.18, d.size), s=7, alpha=0.45, color=_color(i), linewidths=0)
        ax.scatter([d.mean()], [i + 1], marker="D", s=40, color="white", edgecolors="black", zorder=3,
                   label="mean" if i == 0 else None)
    ax.set_xlabel("per-prompt KL(target || prediction), nats (lower is better)")
    ax.set_xlim(left=0)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "Distribution of per-prompt KL")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def kl_vs_context(per_prompt: dict[str, pd.DataFrame], *, title: str = "", bins: int = 6) -> Figure:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (label, df) in enumerate(per_prompt.items()):
        x, y = df["context_tokens"].to_numpy(float), df["kl_nats"].to_numpy(float)
        ax.scatter(x, y, s=8, alpha=0.3, color=_color(i), linewidths=0)
        edges = np.unique(np.quantile(x, np.linspace(0, 1, min(bins, max(1, x.size // 5)) + 1)))
        if edges.size >= 2:
            idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, edges.size - 2)
            mx = [x[idx == b].mean() for b in range(edges.size - 1) if (idx == b).any()]
            my = [y[idx == b].mean() for b in range(edges.size - 1) if (idx == b).any()]
            ax.plot(mx, my, "-o", color=_color(i), label=f"{label} (bin means)", markersize=4)
    ax.set_xscale("log")
    ax.set_xlabel("context length, tokens (log scale)")
    ax.set_ylabel("KL, nats")
    ax.set_ylim(bottom=0)
    ax.set_title(title or "KL against context length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def calibration(per_prompt: dict[str, pd.DataFrame], *, title: str = "", bins: int = 8) -> Figure:
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    lo = 1.0
    for i, (label, df) in enumerate(per_prompt.items()):
        q = df["p_realized"].to_numpy(float)
        p = np.exp(-df["target_ce_realized_nats"].to_numpy(float))
        order = np.argsort(q, kind="stable")
        groups = [g for g in np.array_split(order, min(bins, max(1, q.size // 5))) if g.size]
        mq = np.array([q[g].mean() for g in groups])
        mp = np.array([p[g].mean() for g in groups])
        ax.scatter(q, np.maximum(p, 1e-12), s=6, alpha=0.15, color=_color(i), linewidths=0)
        ax.plot(mq, mp, "-o", color=_color(i), label=label, markersize=4)
        lo = min(lo, q.min(), max(p.min(), 1e-12))
    lo = 10 ** np.floor(np.log10(max(lo, 1e-12)))
    ax.plot([lo, 1], [lo, 1], "--", color="gray", label="calibrated to the target")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, 1.5)
    ax.set_ylim(lo, 1.5)
    ax.set_xlabel("predicted probability of the realized token, q(x)")
    ax.set_ylabel("target's probability of the realized token, p(x)")
    ax.set_title(title or "Realized-token calibration (bin means)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def suite_bars(table: pd.DataFrame, *, title: str = "") -> Figure:
    """``table``: one row per (suite, predictor) with ``kl_mean``, ``kl_ci_low``, ``kl_ci_high``."""
    suites = list(dict.fromkeys(table["suite"]))
    preds = list(dict.fromkeys(table["predictor"]))
    width = 0.8 / max(1, len(preds))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(suites) * max(1, len(preds)) ** 0.5), 4.5))
    for j, pred in enumerate(preds):
        rows = table[table["predictor"] == pred].set_index("suite")
        xs = [i + (j - (len(preds) - 1) / 2) * width for i, s in enumerate(suites) if s in rows.index]
        sub = rows.loc[[s for s in suites if s in rows.index]]
        err = np.vstack([sub["kl_mean"] - sub["kl_ci_low"], sub["kl_ci_high"] - sub["kl_mean"]])
        ax.bar(xs, sub["kl_mean"], width, yerr=np.clip(err, 0, None), capsize=3, color=_color(j), label=pred)
    ax.set_xticks(range(len(suites)), suites)
    ax.set_ylabel("mean KL, nats, with 95% CI (lower is better)")
    ax.set_title(title or "Mean KL per suite")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def png_bytes(fig: Figure, *, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()
