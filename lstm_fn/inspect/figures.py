"""The inspection's charts as PNG files (for papers and READMEs), and its arrays as an
``.npz`` file (for notebooks)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from lstm_fn.inspect.analysis import FEATURES, SATURATION, Inspection
from reference_numpy.atomic import atomic_write


def write_arrays(path: Path, result: Inspection) -> None:
    """``surprisal``, ``top_ids``, ``top_probs``, ``ids``, ``gradient_flow``, each feature
    (``feature/<name>``), and per layer ``L<l>/<part>``, ``L<l>/gate/<g>``,
    ``L<l>/correlation/<part>`` (``[H, F]``, features in :data:`FEATURES` order)."""
    arrays = {"ids": result.ids, "surprisal": result.surprisal, "top_ids": result.top_ids,
              "top_probs": result.top_probs, "gradient_flow": result.gradient_flow,
              **{f"feature/{name}": values for name, values in result.features.items()}}
    for l, (states, gates, correlations) in enumerate(zip(result.states, result.gates,
                                                          result.correlations)):
        arrays.update({f"L{l}/{part}": values for part, values in states.items()})
        arrays.update({f"L{l}/gate/{g}": values for g, values in gates.items()})
        arrays.update({f"L{l}/correlation/{p}": r for p, r in correlations.items()})
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write(path, buffer.getvalue())


def write_charts(folder: Path, result: Inspection) -> list[Path]:
    """``surprisal.png``, ``units.png``, ``gates.png`` (lstm and gru) and
    ``gradient_flow.png`` in ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    charts = {"surprisal": _surprisal, "units": _units, "gradient_flow": _flow}
    if result.gates and result.gates[0]:
        charts["gates"] = _gates
    written = []
    for name, draw in charts.items():
        fig = draw(plt, result)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        atomic_write(folder / f"{name}.png", buffer.getvalue())
        written.append(folder / f"{name}.png")
    return written


def _surprisal(plt, result: Inspection):
    fig, ax = plt.subplots(figsize=(8, 3))
    bits = result.surprisal
    width = max(1, len(bits) // 200)
    smooth = np.convolve(bits, np.ones(width) / width, mode="valid")
    ax.plot(bits, color="#ddd", lw=0.5, label="each character")
    ax.plot(np.arange(len(smooth)) + width // 2, smooth, color="#d1495b",
            label=f"mean over {width}")
    ax.set_xlabel("character")
    ax.set_ylabel("surprisal (bits)")
    ax.set_title(f"mean {bits.mean():.3f} bits/char")
    ax.legend()
    fig.tight_layout()
    return fig


def _units(plt, result: Inspection):
    """The unit that follows each feature best (largest |r| over layers and parts)."""
    fig, ax = plt.subplots(figsize=(8, 3))
    labels, values = [], []
    for f, name in enumerate(FEATURES):
        best = max(((abs(r[u, f]), r[u, f], l, p, u) for l, layer in enumerate(result.correlations)
                    for p, r in layer.items() for u in range(r.shape[0])), default=None)
        if best is not None:
            labels.append(f"{name}\nL{best[2]} {best[3]}[{best[4]}]")
            values.append(best[1])
    ax.bar(range(len(values)), values, color="#2d6fd6")
    ax.set_xticks(range(len(values)), labels, fontsize=7)
    ax.set_ylabel("correlation r")
    ax.set_ylim(-1, 1)
    ax.axhline(0, color="#999", lw=0.5)
    fig.tight_layout()
    return fig


def _gates(plt, result: Inspection):
    fig, axes = plt.subplots(1, len(result.gates), figsize=(3.2 * len(result.gates), 3.2),
                             squeeze=False)
    for l, (ax, saturation) in enumerate(zip(axes[0], result.saturation)):
        for gate, (left, right) in saturation.items():
            ax.scatter(left, right, s=6, alpha=0.6, label=gate)
        ax.plot([0, 1], [1, 0], color="#ddd", lw=0.5)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"layer {l}")
        ax.set_xlabel(f"fraction < {SATURATION}")
        ax.set_ylabel(f"fraction > {1 - SATURATION:.1f}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _flow(plt, result: Inspection):
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.semilogy(result.gradient_flow, color="#d1495b")
    ax.set_xlabel("steps back")
    ax.set_ylabel("||dL_T / dh_t||")
    fig.tight_layout()
    return fig
