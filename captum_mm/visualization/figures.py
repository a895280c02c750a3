"""Relevance over text, image regions and DETR detections, as HTML strings and matplotlib figures.

Everything returns a value (HTML string, array or ``Figure``) and never opens a window:
usable headless and in notebooks alike.
"""

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from captum.attr import visualization as captum_visualization
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor


def _normalized(values) -> np.ndarray:
    values = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64)
    peak = np.abs(values).max() if values.size else 0.0
    return values / peak if peak > 0 else np.zeros_like(values)


def text_relevance_html(tokens: Sequence[str], relevance) -> str:
    """Tokens shaded red by relevance (scaled to its maximum), with Captum's word-importance HTML.

    Args:
        tokens (sequence of str): The tokens.
        relevance (Tensor or array): One value per token.

    Returns:
        *str*: HTML.
    """
    # Captum colours negative importances red: pass the scaled relevance negated.
    return captum_visualization.format_word_importances(list(tokens), -np.clip(_normalized(relevance), 0, 1))


def text_relevance_record(
    tokens: Sequence[str], relevance, predicted: str, probability: float, true: str = "", score: float = 0.0
) -> captum_visualization.VisualizationDataRecord:
    """A Captum ``VisualizationDataRecord`` (for ``captum.attr.visualization.visualize_text``) whose word
    importances shade the tokens red by relevance.

    Args:
        tokens (sequence of str): The tokens.
        relevance (Tensor or array): One value per token.
        predicted (str): The predicted label shown.
        probability (float): Its probability.
        true (str, optional): The true label. Default: ""
        score (float, optional): The attribution score shown. Default: 0.0

    Returns:
        *VisualizationDataRecord*: For ``visualize_text`` or :func:`text_records_html`.
    """
    return captum_visualization.VisualizationDataRecord(
        -np.clip(_normalized(relevance), 0, 1), probability, predicted, true, predicted, score, list(tokens), None
    )


def text_records_html(records) -> str:
    """Captum's text visualisation of records as an HTML string (no notebook display needed).

    Args:
        records (sequence of VisualizationDataRecord): From :func:`text_relevance_record`.

    Returns:
        *str*: HTML.
    """
    return captum_visualization.visualize_text(records, legend=False).data


def _pixel_weights(relevance, grid: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Relevance of a ``grid = (rows, cols)`` tiling (scaled to its maximum, negatives clipped), at every
    pixel of a ``size = (height, width)`` image; the tiles need not divide the image evenly."""
    weights = np.clip(_normalized(relevance), 0, 1)
    if weights.size != grid[0] * grid[1]:
        raise ValueError(f"relevance has {weights.size} values; a {grid[0]}x{grid[1]} grid needs {grid[0] * grid[1]}.")
    rows = np.arange(size[0]) * grid[0] // size[0]
    columns = np.arange(size[1]) * grid[1] // size[1]
    return weights.reshape(grid)[rows[:, None], columns[None, :]]


def region_heatmap(image: np.ndarray, relevance, grid: Sequence[int], title: str = "") -> Figure:
    """Grid or patch relevance as a Captum ``visualize_image_attr`` blended heat map over the image.

    Args:
        image (ndarray): ``[H, W, 3]`` the image.
        relevance (Tensor or array): One value per cell of a ``grid`` tiling of the image.
        grid (sequence of int): ``(rows, cols)``.
        title (str, optional): The figure's title. Default: ""

    Returns:
        *Figure*: The heat map.
    """
    attribution = _pixel_weights(relevance, grid, image.shape[:2])[..., None]
    figure, _ = captum_visualization.visualize_image_attr(
        attribution, image.astype(np.float64) / 255.0, method="blended_heat_map", sign="positive",
        use_pyplot=False, title=title or None,
    )
    return figure


def region_relevance_image(image: np.ndarray, relevance, grid: Sequence[int]) -> np.ndarray:
    """The image multiplied by each region's relevance (scaled to its maximum), as in the paper's Figure 1.

    Args:
        image (ndarray): ``[H, W, 3]`` the image.
        relevance (Tensor or array): One value per region of a ``grid = (rows, cols)`` tiling of the image.
        grid (sequence of int): ``(rows, cols)``.

    Returns:
        *ndarray*: The weighted image, ``[H, W, 3]``.
    """
    return (image.astype(np.float64) / 255.0) * _pixel_weights(relevance, grid, image.shape[:2])[..., None]


def _draw_tokens(axis, tokens: Sequence[str], relevance) -> None:
    """Tokens below the image, shaded red by relevance, wrapped onto as many lines as they need."""
    weights = np.clip(_normalized(relevance), 0, 1)
    axis.apply_aspect()  # the image's square box, as drawn, before measuring in axes units
    renderer = axis.figure.canvas.get_renderer()
    to_axes = axis.transAxes.inverted()
    x, line = 0.0, 0
    for token, weight in zip(tokens, weights):
        text = axis.text(x, -0.08 - 0.13 * line, token, transform=axis.transAxes, fontsize=7, va="top", clip_on=False,
                         bbox=dict(facecolor=(1.0, 1.0 - weight, 1.0 - weight), edgecolor="none", pad=1.0))
        width = text.get_window_extent(renderer).transformed(to_axes).width + 0.04
        if x > 0 and x + width > 1.0:
            x, line = 0.0, line + 1
            text.set_position((x, -0.08 - 0.13 * line))
        x += width


def relevance_gallery(
    images: Sequence[np.ndarray],
    tokens: Sequence[Sequence[str]],
    relevance: dict,
    grid: Sequence[int],
    titles: Optional[Sequence[str]] = None,
) -> Figure:
    """Figure 1 style: one column per sample; the original images on top, then one row per method with image
    regions multiplied by relevance and the question's tokens shaded red below.

    Args:
        images (sequence of ndarray): One ``[H, W, 3]`` image per column.
        tokens (sequence of sequence of str): The question's tokens per column.
        relevance (dict): ``relevance[method] = (text [B, T], image [B, R])``, one row per method.
        grid (sequence of int): ``(rows, cols)`` of the ``R`` image regions.
        titles (sequence of str, optional): One title per column. Default: None

    Returns:
        *Figure*: The gallery.
    """
    methods = list(relevance)
    figure = Figure(figsize=(2.3 * len(images), 2.8 * len(methods) + 2.3))
    FigureCanvasAgg(figure)  # a renderer to measure the tokens with
    # the originals' row needs no room for tokens below it; the method rows get room for three lines
    outer = figure.add_gridspec(2, 1, height_ratios=[1, len(methods) + 0.6 * (len(methods) - 1)], hspace=0.25 / len(methods))
    rows = [outer[0].subgridspec(1, len(images), wspace=0.05)]
    rows += [outer[1].subgridspec(len(methods), len(images), hspace=0.6, wspace=0.05)]
    axes = [[figure.add_subplot(rows[0][0, column]) for column in range(len(images))]]
    axes += [[figure.add_subplot(rows[1][row, column]) for column in range(len(images))] for row in range(len(methods))]
    for column, image in enumerate(images):
        axes[0][column].imshow(image)
        if titles is not None:
            axes[0][column].set_title(titles[column], fontsize=8)
    axes[0][0].set_ylabel("image", fontsize=9)
    for row, method in enumerate(methods, 1):
        text, image_relevance = relevance[method]
        for column, image in enumerate(images):
            axis = axes[row][column]
            axis.imshow(region_relevance_image(image, image_relevance[column], grid))
            _draw_tokens(axis, tokens[column], text[column][: len(tokens[column])])
        axes[row][0].set_ylabel(method, fontsize=9)
    for axis in figure.axes:
        axis.set_xticks([])
        axis.set_yticks([])
    return figure


def detection_masks_figure(image: np.ndarray, maps, masks, labels: Sequence[str]) -> Figure:
    """Each explained DETR query (a column): its relevance map over the image (top row, with a colour bar) and
    its Algorithm-1 mask (bottom row).

    Args:
        image (ndarray): ``[H, W, 3]`` the image.
        maps (sequence of array): Each query's relevance map.
        masks (sequence of array): Each query's binary mask.
        labels (sequence of str): Each query's label.

    Returns:
        *Figure*: The figure.
    """
    return methods_masks_figure(image, {"": (maps, masks)}, labels)


def methods_masks_figure(image: np.ndarray, explained: Dict[str, Tuple[Sequence, Sequence]],
                         labels: Sequence[str]) -> Figure:
    """Each explained DETR query (a column) by each method (two rows): its relevance map over the image (with a
    colour bar) and its Algorithm-1 mask.

    Args:
        image (ndarray): ``[H, W, 3]`` the image.
        explained (dict): Method name (``""``: unnamed) to each query's relevance map and binary mask.
        labels (sequence of str): Each query's label.

    Returns:
        *Figure*: The figure.
    """
    count, rows = max(len(labels), 1), 2 * len(explained)
    figure = Figure(figsize=(2.2 * count + 1.2, 2.3 * rows), layout="constrained")
    axes = figure.subplots(rows, count, squeeze=False)
    height, width = image.shape[:2]
    for row, (method, (maps, masks)) in enumerate(explained.items()):
        top, bottom = axes[2 * row], axes[2 * row + 1]
        for column in range(count):
            for axis in (top[column], bottom[column]):
                axis.imshow(image)
                axis.set_xticks([])
                axis.set_yticks([])
            if column < len(labels):
                heat = np.asarray(maps[column], dtype=np.float64)
                top[column].imshow(_normalized(heat), cmap="jet", alpha=0.5, vmin=0, vmax=1, extent=(0, width, height, 0))
                bottom[column].imshow(np.asarray(masks[column], dtype=np.float64), cmap="Reds", alpha=0.5, vmin=0, vmax=1,
                                      extent=(0, width, height, 0))
                if row == 0:
                    top[column].set_title(labels[column], fontsize=8)
        top[0].set_ylabel(f"{method}\nrelevance" if method else "relevance", fontsize=9)
        bottom[0].set_ylabel(f"{method}\nmask (Algorithm 1)" if method else "mask (Algorithm 1)", fontsize=9)
    scale = ScalarMappable(Normalize(0, 1), "jet")
    figure.colorbar(scale, ax=axes[0].tolist(), shrink=0.9, label="relevance / max")  # beside the first method's rows
    mask = ScalarMappable(Normalize(0, 1), ListedColormap([colormaps["Reds"](0.0), colormaps["Reds"](1.0)]))
    figure.colorbar(mask, ax=axes[1].tolist(), shrink=0.9, ticks=[0.25, 0.75],
                    label="mask").ax.set_yticklabels(["out", "in"])
    return figure
