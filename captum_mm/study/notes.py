"""What the main job's report says about its numbers, generated from them: the best value of each table row,
why a value is n/a, why a gallery panel is black, and how the measured numbers compare with the paper's."""

from typing import Any, Dict, List, Optional, Sequence

import torch

#: Why a method's image relevance may be all zero (a black gallery panel), by the method's name.
VANISHING = {
    "Grad-CAM": "Grad-CAM keeps the positive part after the head mean, which erases a readout row whose "
    "gradient-weighted heads sum to a negative value",
    "w/o aggregation": "without aggregation, Eq. 11 replaces R^tt by Ā·R^it, still zero at the first cross-attention "
    "(LXMERT's), so the relevance collapses",
    "ours (reference Eq. 8-9)": "the reference code drops a layer's whole Eq. 10 update when a row of R - I sums to zero",
    **{method: f"{method}'s relevance is signed, and here no image region or patch has a positive share (with it "
       "removed the explained logit would not drop)" for method in ("AttnLRP", "CP-LRP", "LIG (Captum)",
                                                                      "FeatureAblation (Captum)")},
    "transformer att.": "transformer attribution keeps the positive part of ∇A ⊙ R_A (R_A: LRP's relevance at the map) in "
    "each head; at the readout row it is ≤ 0 over every image token of the maps it reads (across modalities the last "
    "cross-attention alone), so nothing positive reaches the image",
}

#: The paper's headline numbers (docs/METHOD.md, "Headline numbers"): pretrained models on the full datasets.
PAPER_AUC = {  # supplementary Table 3, LXMERT on VQA: Neg. img, Pos. img, Neg. text, Pos. text
    "ours": (63.24, 51.10, 48.70, 21.61), "transformer att.": (61.46, 52.75, 48.24, 21.68),
    "raw attn.": (61.34, 54.17, 38.32, 32.56), "partial LRP": (60.90, 52.82, 45.15, 24.22),
    "Grad-CAM": (60.08, 59.21, 37.99, 34.14), "rollout": (58.64, 57.23, 32.05, 39.29),
}
PAPER_AUC_ROWS = ("Neg. img", "Pos. img", "Neg. text", "Pos. text")
PAPER_DETR = {"AP": 13.1, "AP_medium": 14.4, "AP_large": 24.6, "AR": 19.3, "AR_medium": 23.9, "AR_large": 33.2}

#: COCO's object area ranges (px²), as pycocotools scores them.
COCO_AREAS = {"small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, float("inf"))}


def number(value: float) -> str:
    """Two decimals; pycocotools' -1 (no object of that size) as n/a."""
    return "n/a" if value < 0 else f"{value:.2f}"


def best_columns(values: Dict[str, float], better: str) -> List[str]:
    r"""
    The columns holding a row's best value as the table shows it (two decimals; ties all best; n/a never).

    Args:
        values (dict): Column to value.
        better (str): ``"higher"`` or ``"lower"``.

    Returns:
        *list of str*: The best columns, none when every value is n/a.
    """
    shown = {column: round(value, 2) for column, value in values.items() if value >= 0}
    if not shown:
        return []
    best = (max if better == "higher" else min)(shown.values())
    return [column for column, value in shown.items() if value == best]


def direction_caption(better: Dict[str, str]) -> str:
    """Which direction is better for each row of a table, as its caption says."""
    by = {side: [row for row, b in better.items() if b == side] for side in ("higher", "lower")}
    parts = [f"{side} is better for {', '.join(rows)}" for side, rows in by.items() if rows]
    return ("Bold: the best value in each row (ties all bold); " + "; ".join(parts)).rstrip(".") + "."  # "infid." ends one


def vanished_panels(relevance: Dict[str, Any], titles: Optional[Sequence[str]] = None, modality: str = "image") -> str:
    r"""
    A note on the gallery's empty panels: the methods whose relevance of one modality has no positive value, where, and
    why.

    Args:
        relevance (dict): ``relevance[method] = (text [B, T], image [B, R])``, as the gallery shows it (for
                    ``modality="text"``, the image may be None).
        titles (sequence of str, optional): The columns' (texts') names. Default: None (numbered from 1)
        modality (str, optional): ``"image"`` (black image panels) or ``"text"`` (white lines of text heat maps).
                    Default: "image"

    Returns:
        *str*: The note, empty when no panel is empty.
    """
    notes = []
    for method, values in relevance.items():
        rows = torch.as_tensor(values[0 if modality == "text" else 1]).detach()
        black = [column for column, row in enumerate(rows) if not bool((row > 0).any())]
        if black:
            if len(black) == len(rows):
                where = "every text" if modality == "text" else "every column"
            elif modality == "text":
                where = ", ".join(titles[c] if titles else f"text {c + 1}" for c in black)
            else:
                where = "column " + ", ".join(titles[c] if titles else str(c + 1) for c in black)
            reason = VANISHING.get(method, "the reason is not diagnosed")
            notes.append(f"{method} ({where}): {reason}")
    kind = "White lines (no positive text relevance)" if modality == "text" else "Black panels (no positive image relevance)"
    return (f"{kind}: " + "; ".join(notes) + ".") if notes else ""


def missing_sizes(areas: Sequence[float], rows: Sequence[str]) -> str:
    r"""
    Why segmentation rows are n/a: pycocotools scores -1 for an area range that holds no ground-truth object.

    Args:
        areas (sequence of float): The ground-truth objects' areas (px²) in the scenes scored.
        rows (sequence of str): The table's n/a rows.

    Returns:
        *str*: The note, empty when no row is n/a.
    """
    if not rows:
        return ""
    counts = {size: sum(low <= area < high for area in areas) for size, (low, high) in COCO_AREAS.items()}
    return (f"n/a ({', '.join(rows)}): pycocotools scores -1 when no ground-truth object lies in the row's area range. "
            f"These scenes hold {counts['small']} small (< 32² px), {counts['medium']} medium (32² to 96² px) and "
            f"{counts['large']} large (> 96² px) objects; the largest covers {max(areas, default=0):.0f} px².")


def _rank(values: Dict[str, float], column: str, better: str) -> int:
    """1 + the columns whose value (as shown, two decimals) beats ``column``'s."""
    sign = 1 if better == "higher" else -1
    return 1 + sum(sign * (round(v, 2) - round(values[column], 2)) > 0 for v in values.values() if v >= 0)


def _measured(table: Dict[str, Any], rows: Sequence[str], paper: Optional[Dict[str, float]]) -> str:
    """Ours per row: its value, its rank and, where given, the paper's value."""
    parts, values = [], table["rows"]
    for row in rows:
        if values[row]["ours"] < 0:
            parts.append(f"{row} n/a")
            continue
        best = best_columns(values[row], table["better"][row])
        rank = _rank(values[row], "ours", table["better"][row])
        leader = "" if "ours" in best else f", best {best[0]} {number(values[row][best[0]])}"
        tied = sum(round(v, 2) == round(values[row]["ours"], 2) for v in values[row].values()) - 1
        ties = f", tied with {tied} other{'s' * (tied > 1)}" if tied else ""
        reference = f", paper {paper[row]:.2f}" if paper else ""
        parts.append(f"{row} {number(values[row]['ours'])} (rank {rank} of {len(values[row])}{ties}{leader}{reference})")
    return "; ".join(parts)


def paper_comparison(name: str, table: Dict[str, Any]) -> str:
    r"""
    How a model's measured numbers compare with the paper's headline numbers, generated from the table.

    Args:
        name (str): The model's name (``lxmert-...`` is compared value by value; others by ranking).
        table (dict): Its AUC table (rows :data:`PAPER_AUC_ROWS`) or DETR's segmentation table, with ``better``.

    Returns:
        *str*: The paragraph, empty when "ours" was not run; for tables without the image rows (a text-only model), that
        the paper has no such study.
    """
    if "ours" not in table["columns"]:
        return ""
    if set(PAPER_DETR) <= set(table["rows"]):
        paper = ", ".join(f"{row} {value:.1f}" for row, value in PAPER_DETR.items())
        return (f"The paper (DETR pretrained on COCO, supplementary Table 1, ours): {paper}. Here ({table['title'].split(': ', 1)[-1]}), "
                f"ours: {_measured(table, list(PAPER_DETR), None)}.")
    if not set(PAPER_AUC_ROWS) <= set(table["rows"]):
        return f"The paper reports no study of {name}'s kind (a text-only model); its tables above have no paper counterpart."
    directions = {row: "higher" if row.startswith("Neg") else "lower" for row in PAPER_AUC_ROWS}
    paper_first = sum(_rank({m: v[i] for m, v in PAPER_AUC.items()}, "ours", directions[row]) == 1
                      for i, row in enumerate(PAPER_AUC_ROWS))
    first = sum("ours" in best_columns(table["rows"][row], directions[row]) for row in PAPER_AUC_ROWS)
    values = {row: PAPER_AUC["ours"][i] for i, row in enumerate(PAPER_AUC_ROWS)} if name.startswith("lxmert") else None
    scope = "" if values else f" (it reports no numbers for {name})"
    return (f"The paper (LXMERT pretrained on VQA, supplementary Table 3) finds ours best of {len(PAPER_AUC)} methods "
            f"in {paper_first} of {len(PAPER_AUC_ROWS)} settings{scope}. Here ours is best in {first} of "
            f"{len(PAPER_AUC_ROWS)}: {_measured(table, PAPER_AUC_ROWS, values)}.")
