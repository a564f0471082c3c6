"""The frozen/trainable diagram: one row of blocks per strategy, one block per stage group (stem → head).

A block is filled when its group trains from the first epoch, hatched when it is unfrozen later (gradual,
LP-FT) and grey when it stays frozen. Its width grows with the square root of its parameter count, so the
big late stages look big without the stem vanishing; the count itself is written in the block. A note at
the end of the row says where the weights start from and how much of the model trains.

The input is what `headstart.strategies.describe_strategy` returns (and `headstart inspect --json` prints),
so the diagram is drawn from the same records the run printed, not from a second description.
Plain SVG text: no plotting library, scales in the browser, inlines into the HTML report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from pathlib import Path

TRAINABLE, LATER, FROZEN, SCRATCH = "#f28e2b", "#f9c98f", "#c9ced6", "#e15759"
ROW_HEIGHT, BLOCK_HEIGHT, LABEL_WIDTH, NOTE_WIDTH = 62, 50, 92, 200
MIN_BLOCK, GAP = 54, 3


@dataclass
class DiagramRow:
    """One strategy: its name, whether it starts from pretrained weights, and describe_strategy's rows."""

    strategy: str
    pretrained: bool
    groups: list[dict]


def human(n: float) -> str:
    """1234567 -> '1.2M', 45600 -> '46k', 928 -> '928'."""
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            value = n / div
            return f"{value:.1f}{suffix}" if value < 10 else f"{value:.0f}{suffix}"
    return f"{n:.0f}"


def _widths(params: list[int], total_width: float) -> list[float]:
    weights = [math.sqrt(max(p, 1)) for p in params]
    free = total_width - MIN_BLOCK * len(params) - GAP * (len(params) - 1)
    return [MIN_BLOCK + max(free, 0) * w / sum(weights) for w in weights]


def strategy_diagram(rows: list[DiagramRow], title: str | None = None, width: int = 980) -> str:
    """An SVG document: frozen vs trainable stage groups, one row per strategy, with parameter counts."""
    if not rows:
        raise ValueError("no strategies to draw")
    top = 30 if title else 6
    legend_y = top + ROW_HEIGHT * len(rows) + 8
    height = legend_y + 44
    blocks_width = width - LABEL_WIDTH - NOTE_WIDTH
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif" role="img">',
        "<defs><pattern id=\"later\" width=\"8\" height=\"8\" patternUnits=\"userSpaceOnUse\" "
        'patternTransform="rotate(45)">'
        f'<rect width="8" height="8" fill="{FROZEN}"/><rect width="4" height="8" fill="{LATER}"/></pattern></defs>',
    ]
    if title:
        out.append(f'<text x="2" y="18" font-size="15" font-weight="600">{escape(title)}</text>')
    for r, row in enumerate(rows):
        y = top + r * ROW_HEIGHT
        out.append(f'<text x="2" y="{y + BLOCK_HEIGHT / 2 + 5:.0f}" font-size="14" font-weight="600">'
                   f"{escape(row.strategy)}</text>")
        params = [g["params"] for g in row.groups]
        x = LABEL_WIDTH
        for g, w in zip(row.groups, _widths(params, blocks_width)):
            later = not g["trainable"] and g.get("unfreezes_at_epoch") not in (None, 0)
            fill = (SCRATCH if not row.pretrained else TRAINABLE) if g["trainable"] else ("url(#later)" if later else FROZEN)
            status = ("trains" if g["trainable"] else f"unfrozen at epoch {g['unfreezes_at_epoch'] + 1}" if later
                      else "frozen")
            lr = f", lr {g['lr']:.2g}" if g.get("lr") else ""
            out.append(f'<g><title>{escape(g["group"])}: {g["params"]:,} parameters, {status}{lr}</title>'
                       f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{BLOCK_HEIGHT}" rx="4" fill="{fill}" '
                       f'stroke="#555" stroke-width="0.6"/>')
            cx = x + w / 2
            out.append(f'<text x="{cx:.1f}" y="{y + 16}" font-size="11" text-anchor="middle" font-weight="600">'
                       f'{escape(g["group"])}</text>')
            out.append(f'<text x="{cx:.1f}" y="{y + 30}" font-size="10.5" text-anchor="middle">{human(g["params"])}</text>')
            if later:
                out.append(f'<text x="{cx:.1f}" y="{y + 43}" font-size="9.5" text-anchor="middle">'
                           f'from ep {g["unfreezes_at_epoch"] + 1}</text>')
            out.append("</g>")
            x += w + GAP
        total = sum(params)
        first = sum(g["params"] for g in row.groups if g["trainable"])
        widest = sum(g["params"] for g in row.groups if g["trainable"] or g.get("unfreezes_at_epoch") is not None)
        start = "pretrained (ImageNet)" if row.pretrained else "random init"
        lines = [start, f"trains {human(first)} of {human(total)} ({first / total:.0%})"]
        if widest != first:
            lines.append(f"later up to {human(widest)} ({widest / total:.0%})")
        for i, line in enumerate(lines):
            color = "#333" if i else "#000"
            out.append(f'<text x="{x + 8:.1f}" y="{y + 15 + 14 * i}" font-size="12" fill="{color}">{escape(line)}</text>')
    legend = [(TRAINABLE, "trainable (pretrained start)"), (SCRATCH, "trainable (random start)"),
              ("url(#later)", "unfrozen later"), (FROZEN, "frozen (BatchNorm stats kept)")]
    x = LABEL_WIDTH
    for fill, label in legend:
        out.append(f'<rect x="{x}" y="{legend_y}" width="16" height="12" rx="2" fill="{fill}" stroke="#555" '
                   f'stroke-width="0.6"/><text x="{x + 21}" y="{legend_y + 10}" font-size="11.5">{escape(label)}</text>')
        x += 30 + 7 * len(label)
    out.append(f'<text x="{LABEL_WIDTH}" y="{legend_y + 32}" font-size="11" fill="#555">'
               "input → stem → … → head · block width ∝ √parameters · hover a block for its learning rate</text>")
    out.append("</svg>")
    return "\n".join(out)


def write_diagram(rows: list[DiagramRow], path: str | Path, title: str | None = None) -> Path:
    path = Path(path)
    path.write_text(strategy_diagram(rows, title), encoding="utf-8")
    return path


def diagram_row(config: dict, label: str | None = None) -> DiagramRow | None:
    """The diagram row a run recorded in its config.json (`groups`: describe_strategy at the start of the run);
    None for runs made before headstart recorded it. Reports read records; they never build a model."""
    if "groups" not in config:
        return None
    return DiagramRow(label or config["strategy"]["name"], config["strategy"].get("pretrained", True), config["groups"])
