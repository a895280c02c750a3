"""The main job's tables (as text, HTML and CSV) and its self-contained HTML report."""

import base64
import html
import io
from typing import Any, Dict, List

from matplotlib.figure import Figure

from captum_mm.study.notes import best_columns, direction_caption, number, paper_comparison


def table(rows: Dict[str, Dict[str, float]], columns: List[str], title: str, name: str,
          better: Dict[str, str]) -> Dict[str, Any]:
    r"""
    ``rows[row][column]`` as a printable/HTML/CSV table.

    Args:
        rows (dict): ``rows[row][column]``: the table's numbers.
        columns (list of str): The columns, in order.
        title (str): The table's title.
        name (str): Its CSV file's name without ``.csv``: model and test (``lxmert_auc``).
        better (dict): Per row, ``"higher"`` or ``"lower"``: which values are better.

    Returns:
        *dict*: The table's ``title``, ``name``, ``columns``, ``rows``, ``better`` and ``notes`` (why values are
        n/a; filled in by the study).
    """
    return {"title": title, "name": name, "columns": columns, "rows": rows, "better": better, "notes": []}


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def text_table(table: Dict[str, Any]) -> str:
    r"""
    A table as the terminal prints it: fixed-width columns, two decimals.

    Args:
        table (dict): From :func:`table`.

    Returns:
        *str*: Its title line, header line and one line per row.
    """
    columns, width = table["columns"], max([10] + [len(c) for c in table["columns"]]) + 2
    lines = [table["title"], " " * 12 + "".join(c.rjust(width) for c in columns)]
    for row, values in table["rows"].items():
        lines.append(row.ljust(12) + "".join(number(values[c]).rjust(width) for c in columns))
    return "\n".join(lines)


def _cell(value: float, best: bool) -> str:
    return f"<td class='best'><b>{number(value)}</b></td>" if best else f"<td>{number(value)}</td>"


def _html_table(table: Dict[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table["columns"])
    body = "".join(
        f"<tr><th>{html.escape(row)}</th>"
        + "".join(_cell(values[c], c in best_columns(values, table["better"][row])) for c in table["columns"]) + "</tr>"
        for row, values in table["rows"].items()
    )
    notes = "".join(f"<p class='note'>{html.escape(note)}</p>" for note in table["notes"])
    caption = html.escape(direction_caption(table["better"]) + f" CSV: {table['name']}.csv")
    return (f"<h3>{html.escape(table['title'])}</h3><table><tr><th></th>{head}</tr>{body}</table>"
            f"<p class='caption'>{caption}</p>{notes}")


def csv_table(table: Dict[str, Any]) -> str:
    r"""
    A table as CSV: a ``setting`` column, then one per column of the table, four decimals.

    Args:
        table (dict): From :func:`table`.

    Returns:
        *str*: The CSV text.
    """
    lines = [",".join(["setting"] + table["columns"])]
    lines += [",".join([row] + [f"{values[c]:.4f}" for c in table["columns"]]) for row, values in table["rows"].items()]
    return "\n".join(lines) + "\n"


# What each kind of figure in the report shows and how to read it, by the first word of its title.
CAPTIONS = {
    "curves": "Perturbation curves: the model's accuracy (%, y axis; of its generated answer for the generative VLM) on "
    "the test questions (test reviews, for the text classifier) as a growing fraction of its image regions or patches or its text tokens (x axis) is removed, least relevant first (negative perturbation: the higher "
    "the curve, the better the explanation) or most relevant first (positive: the lower, the better). One line per "
    "method (methods with identical curves share one line, joined by \"=\" in the legend); the legend gives each "
    "method's area under the curve, as in the tables.",
    "gallery": "Gallery: top row, test images with their question and the model's answer (for the generative VLM, "
    "one column per generated word piece, the piece named in the title). Below, one row per "
    "method: the image with each region (patch) multiplied by its relevance (scaled to the maximum, so irrelevant regions "
    "are black) and the question's tokens shaded red by their relevance (deeper red: more relevant). A good "
    "explanation shows the shape the question is about and its key words.",
    "interactive": "Interactive gallery: each gallery question's generated answer, by every method (the buttons switch "
    "between them). Click or hover a generated word piece (the end token included) to see its relevance over the prompt's "
    "tokens and the pieces before it (deeper red: more relevant; the 64 image tokens, whose relevance lies on the image, "
    "shown as one) and over the image's 8 x 8 patches (jet colours over the image, scaled to the map's maximum; the slider "
    "sets their opacity).",
    "heatmaps": "Text heat maps: test reviews of the synthetic sentiment task, each with its label and the model's "
    "prediction; one line per method: the review's tokens shaded red by their relevance (scaled to the maximum; deeper "
    "red: more relevant; negative relevance white). The evidence keywords that decide the label (the ground truth of "
    "the plausibility table) are framed in green and set in bold; keywords of the opposite sentiment are distractors.",
    "masks": "DETR masks: one column per detection in this scene (most confident first; a detection whose box overlaps "
    "an earlier one of its class by IoU > 0.7 is labelled its duplicate), two rows per method. Upper row: the "
    "detection's relevance over the image (jet colours, scaled to its maximum: red most relevant, blue least). "
    "Lower row: the weakly-supervised segmentation mask (Algorithm 1) made from it, in red. A good explanation "
    "covers the detected object and little else.",
}


def html_report(studies: Dict[str, Any], settings: Dict[str, str]) -> str:
    r"""
    The self-contained HTML report: the run's settings; per model its tables (best values bold, n/a explained), how
    its numbers compare with the paper's (:func:`~captum_mm.study.notes.paper_comparison` of its first table), its
    ``summary`` paragraphs (which method to trust, what leaving sinks out did), its figures with their captions and
    notes (black panels explained).

    Args:
        studies (dict): Per model, its study's ``tables``, ``figures`` (title to matplotlib figure), optionally
                    ``summary`` (paragraphs), ``notes`` (figure title to a note) and ``views`` (title to a list of interactive
                    :class:`~captum_mm.visualization.ExplanationView`).
        settings (dict): The run's settings, as the report states them.

    Returns:
        *str*: The HTML page (figures embedded as PNG, views with their script and data inline).
    """
    parts = [
        "<html><head><meta charset='utf-8'><title>captum_mm: the study on the shipped models</title><style>",
        "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:0 1em} td,th{padding:2px 8px;text-align:right}",
        "table{border-collapse:collapse;margin-bottom:.3em;display:block;overflow-x:auto;max-width:100%;font-size:85%}",
        "tr:nth-child(even){background:#f4f4f4} td.best{background:#dfd}",
        "figure{margin:0 0 2em} img{max-width:100%;height:auto} figcaption,p.caption{color:#333;max-width:60em}",
        "p.note{color:#844;max-width:60em} p.comparison{max-width:60em;border-left:3px solid #88a;padding-left:.6em}",
        "table.settings td,table.settings th{text-align:left}</style></head><body>",
        "<h1>Generic attention-model explainability on the shipped models</h1>",
        "<table class='settings'>"
        + "".join(f"<tr><th>{html.escape(key)}</th><td>{html.escape(value)}</td></tr>" for key, value in settings.items())
        + "</table>",
        "<p>Perturbation AUC: higher is better for negative perturbation, lower for positive. Segmentation: COCO "
        "<code>segm</code> scores (%) from pycocotools.</p>",
    ]
    for name, study in studies.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts += [_html_table(table) for table in study["tables"]]
        comparison = paper_comparison(name, study["tables"][0])
        for paragraph in [comparison, *study.get("summary", [])]:
            if paragraph:
                parts.append(f"<p class='comparison'>{html.escape(paragraph)}</p>")
        for title, figure in study["figures"].items():
            parts.append(
                f"<figure><h3>{html.escape(title)}</h3><img src='data:image/png;base64,{_png(figure)}' alt='{html.escape(title)}'/>"
                f"<figcaption>{html.escape(CAPTIONS[title.split()[0]])}</figcaption>{_note(study, title)}</figure>"
            )
        for title, views in study.get("views", {}).items():
            parts.append(f"<figure><h3>{html.escape(title)}</h3>{''.join(view.html() for view in views)}"
                         f"<figcaption>{html.escape(CAPTIONS[title.split()[0]])}</figcaption></figure>")
    parts.append("</body></html>")
    return "".join(parts)


def _note(study: Dict[str, Any], title: str) -> str:
    note = study.get("notes", {}).get(title, "")
    return f"<p class='note'>{html.escape(note)}</p>" if note else ""
