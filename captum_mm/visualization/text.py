"""Text heat maps of several methods on several texts, as one matplotlib figure (headless)."""

from typing import Any, Dict, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from captum_mm.visualization.figures import _normalized

WIDTH, LABEL, LINE = 11.0, 1.5, 0.24  # inches: the figure's width, the method names' column, one line of tokens


def text_heatmaps(tokens: Sequence[Sequence[str]], relevance: Dict[str, Any], titles: Optional[Sequence[str]] = None,
                  marked: Optional[Sequence[Sequence[bool]]] = None) -> Figure:
    r"""
    One block per text: its title, then one line per method with the text's tokens shaded red by that method's
    relevance (scaled to its maximum; negative values white), wrapped onto as many lines as they need.

    Args:
        tokens (sequence of sequence of str): Each text's tokens.
        relevance (dict): Method name to ``[B, T]`` relevance, a tensor or array (one row per text, at least as many
                    values as tokens).
        titles (sequence of str, optional): One title per text. Default: None (numbered)
        marked (sequence of sequence of bool, optional): Per text and token, whether to frame it in green (e.g. the
                    ground-truth evidence) and set it in bold. Default: None

    Returns:
        *Figure*: The heat maps.

    Examples::

        >>> figure = text_heatmaps([["[CLS]", "great", "film", "[SEP]"]], {"ours": [[0.0, 1.0, 0.2, 0.0]]})
    """
    figure = Figure(figsize=(WIDTH, 1.0))
    renderer = FigureCanvasAgg(figure).get_renderer()
    axis = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    axis.set_axis_off()
    y = 0.15
    for row, text in enumerate(tokens):
        axis.text(0.05, y, titles[row] if titles else f"text {row + 1}", fontsize=8, fontweight="bold", va="top")
        y += 1.3 * LINE
        for method, values in relevance.items():
            axis.text(0.05, y, method, fontsize=7, va="top")
            weights = np.clip(_normalized(np.asarray(values[row], dtype=np.float64)[: len(text)]), 0, 1)
            x = LABEL
            for index, (token, weight) in enumerate(zip(text, weights)):
                frame = bool(marked and marked[row][index])
                drawn = axis.text(x, y, token, fontsize=7, va="top", fontweight="bold" if frame else "normal",
                                  bbox=dict(facecolor=(1.0, 1.0 - weight, 1.0 - weight), pad=1.0,
                                            edgecolor="green" if frame else "none", linewidth=1.0))
                width = drawn.get_window_extent(renderer).width / figure.dpi + 0.06
                if x > LABEL and x + width > WIDTH - 0.05:
                    x, y = LABEL, y + LINE
                    drawn.set_position((x, y))
                x += width
            y += LINE
        y += 0.5 * LINE
    figure.set_size_inches(WIDTH, y)
    axis.set_xlim(0, WIDTH)
    axis.set_ylim(y, 0)
    return figure
