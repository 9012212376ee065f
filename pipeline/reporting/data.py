"""A task's data summary (data/split/<task>.json) as the report's lines about its data."""

from __future__ import annotations

from typing import Any

PARTS = {"train": "train", "val": "validation", "test": "test"}


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count:,}" for name, count in counts.items())


def data_lines(summary: dict[str, Any]) -> list[str]:
    """What the data are and what the checks found: samples per class and part, the images'
    sizes and modes or the table's columns, exact copies, dropped files or rows."""
    if not summary:
        return []
    source = summary.get("source", {})
    parts = {part: summary["parts"][part] for part in PARTS if part in summary.get("parts", {})}
    classes = next(iter(parts.values()), {})
    lines = [
        f"- source `{source.get('source')}` ({source.get('kind')}): {source.get('samples', 0):,} "
        f"samples in {len(source.get('classes', {}))} classes",
        "- "
        + ", ".join(f"{PARTS[part]} {sum(counts.values()):,}" for part, counts in parts.items())
        + "; per class ("
        + "/".join(PARTS[part] for part in parts)
        + "): "
        + ", ".join(
            f"{name} " + "/".join(str(counts[name]) for counts in parts.values())
            for name in classes
        ),
    ]
    images = source.get("images")
    if images:
        sizes = images["sizes"]
        lines.append(
            f"- images: {images['resized_to']} {images['color']}, resized from "
            f"{sizes['distinct']} sizes ({sizes['smallest']} to {sizes['largest']}); "
            f"formats {_counts(images['formats'])}; modes {_counts(images['modes'])}"
        )
    columns = source.get("columns")
    if columns:
        described = [
            f"{name} ({column['type']}"
            + (f", {column['categories']} categories" if "categories" in column else "")
            + (f", {column['missing']} missing" if column.get("missing") else "")
            + ")"
            for name, column in columns.items()
        ]
        lines.append(f"- label `{source.get('label')}`; features: {', '.join(described)}")
    copies = source.get("duplicates", {})
    left_out = sum(summary.get("copies_left_out", {}).values())
    if copies.get("copies"):
        apart = copies.get("conflicting_labels")
        lines.append(
            f"- exact copies: {copies['copies']} in {copies['groups']} groups"
            + (f", {apart} of them labelled apart" if apart else "")
            + " (each group kept in one part"
            + (f"; {left_out} left out of a given part" if left_out else "")
            + ")"
        )
    else:
        lines.append("- no exact copies")
    dropped = source.get("dropped", {})
    if dropped.get("count"):
        named = ", ".join(f"`{name}`" for name in dropped.get("files", {}))
        lines.append(f"- dropped: {dropped['count']} " + (f"files ({named})" if named else "rows"))
    if source.get("label_errata_changed"):
        lines.append(f"- labels corrected by the source's errata: {source['label_errata_changed']}")
    return ["Data:", "", *lines, ""]
