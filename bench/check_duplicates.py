"""How often `check`'s near-duplicate search glues distinct images together: the old grouping against the new.

For each data set (train + val together, as `check` sees them) every pair of images within `--bits` dHash bits
is a candidate. Then:

    old   candidates confirmed by 16x16 grey thumbnails correlating >= 0.7, grouped into connected components
          (what check did up to this change): a group of mixed labels was shown by its first two members
    new   candidates confirmed by 64x64 grey thumbnails correlating >= 0.85 (check.NEAR_DUPLICATE_CORR),
          reported as pairs (check.near_duplicate_pairs), never grouped

and every flagged pair is checked by a stricter measure: identical pixels, or 128x128 grey thumbnails that
correlate >= 0.9 (a copy resized or re-encoded stays there; a shifted crop may not, so "strict" undercounts
true copies a little). A chained old group is one in which some two members are not themselves a
confirmed pair; its member pairs that pass the strict measure say how much of it is one picture.
Contact sheets of the flagged pairs, to look at, go to --sheets.

    PYTHONPATH=src .venv/bin/python bench/check_duplicates.py    # -> bench/results/check-duplicates.json

Needs scipy (connected components of the old grouping), which the venv has through scikit-learn.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from headstart.analysis.check import (NEAR_DUPLICATE_BITS, NEAR_DUPLICATE_CORR, decode_image, grey_thumbnail,
                                      inspect_images, near_duplicate_pairs, scan_data, thumbnail_correlation)

BENCH = Path(__file__).resolve().parent
DATA = BENCH.parents[1] / "shared" / "data"
OLD_SIDE, OLD_CORR = 16, 0.7  # check's confirmation before this change
STRICT_SIDE, STRICT_CORR = 128, 0.9
TEXTURES = ("dtd-7", "blood-cells-pbc")  # the data the question was asked about: also swept over --sweep-bits


def measure(name: str, bits_list: list[int], sheets: Path) -> dict:
    """Old and new near-duplicate findings on one data set, at each dHash threshold in `bits_list`."""
    started = time.perf_counter()
    splits = scan_data(DATA / name)
    items = [(splits.train, r) for r in splits.train.refs] + [(splits.val, r) for r in splits.val.refs]
    labels = splits.train.labels + splits.val.labels
    split_of = ["train"] * len(splits.train) + ["val"] * len(splits.val)
    found, _, _ = inspect_images(items)
    hashes = np.array([f["dhash"] if f["dhash"] is not None else 0 for f in found], dtype=np.uint64)
    usable = np.array([f["dhash"] is not None for f in found])

    @functools.cache
    def thumbnails(i: int) -> dict[int, np.ndarray]:
        img = decode_image(*items[i])[0]
        return {side: grey_thumbnail(img, side) for side in (OLD_SIDE, 64, STRICT_SIDE)}

    def corr(i: int, j: int, side: int) -> float:
        return thumbnail_correlation(thumbnails(i)[side], thumbnails(j)[side])

    def strict(i: int, j: int) -> bool:
        return found[i]["content"] == found[j]["content"] or corr(i, j, STRICT_SIDE) >= STRICT_CORR

    out = {"images": len(items), "usable_hashes": int(usable.sum()), "by_bits": {}}
    for bits in bits_list:
        candidates = near_duplicate_pairs(hashes, usable, bits)
        old = [(i, j) for i, j, _ in candidates if corr(i, j, OLD_SIDE) >= OLD_CORR]
        new = [(i, j) for i, j, _ in candidates if corr(i, j, 64) >= NEAR_DUPLICATE_CORR]
        out["by_bits"][bits] = {"candidates": len(candidates),
                                "old": old_grouping(old, labels, strict, len(items)),
                                "new": new_pairs(new, labels, split_of, strict)}
        if bits == NEAR_DUPLICATE_BITS:
            contact_sheet(new, items, labels, splits.classes, corr, sheets / f"{name}-new.png")
            contact_sheet(old, items, labels, splits.classes, corr, sheets / f"{name}-old.png")
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def old_grouping(pairs: list[tuple[int, int]], labels: list[int], strict, n: int) -> dict:
    """The groups check used to report: connected components of the confirmed pairs."""
    if not pairs:
        return {"pairs": 0, "groups": 0}
    rows, cols = zip(*pairs)
    graph = coo_matrix((np.ones(len(pairs)), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    groups = [g for g in (np.flatnonzero(component == c).tolist() for c in np.unique(component)) if len(g) > 1]
    linked = set(pairs)
    chained = [g for g in groups if any((i, j) not in linked for i, j in itertools.combinations(g, 2))]
    member_pairs = [p for g in chained for p in itertools.combinations(g, 2)]
    mixed = [g for g in groups if len({labels[i] for i in g}) > 1]
    return {
        "pairs": len(pairs), "pairs_strict": sum(strict(i, j) for i, j in pairs),
        "groups": len(groups), "largest_groups": sorted((len(g) for g in groups), reverse=True)[:5],
        "chained_groups": len(chained), "images_in_chained_groups": sum(len(g) for g in chained),
        "chained_member_pairs": len(member_pairs),
        "chained_member_pairs_strict": sum(strict(i, j) for i, j in member_pairs[:20000]),
        "mixed_label_groups": len(mixed),
        "mixed_label_groups_shown_by_one_label": sum(labels[g[0]] == labels[g[1]] for g in mixed),
    }


def new_pairs(pairs: list[tuple[int, int]], labels: list[int], split_of: list[str], strict) -> dict:
    """What check reports now: pairs, split into label conflicts, train/val leaks and repeats within a split."""
    conflict = [p for p in pairs if labels[p[0]] != labels[p[1]]]
    leak = [p for p in pairs if labels[p[0]] == labels[p[1]] and split_of[p[0]] != split_of[p[1]]]
    return {"pairs": len(pairs), "pairs_strict": sum(strict(i, j) for i, j in pairs),
            "conflict_pairs": len(conflict), "conflict_pairs_strict": sum(strict(i, j) for i, j in conflict),
            "leak_pairs": len(leak), "repeat_pairs": len(pairs) - len(conflict) - len(leak)}


def contact_sheet(pairs: list[tuple[int, int]], items, labels, classes, corr, path: Path, limit: int = 40) -> None:
    """The flagged pairs side by side (spread over the range of 64x64 correlation), captioned, to look at."""
    if not pairs:
        return
    ranked = sorted(pairs, key=lambda p: corr(*p, 64))
    shown = [ranked[k] for k in sorted(set(np.linspace(0, len(ranked) - 1, min(limit, len(ranked))).astype(int)))]
    tile = 128
    sheet = Image.new("RGB", (2 * tile + 10, (tile + 14) * len(shown)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (i, j) in enumerate(shown):
        top = row * (tile + 14)
        for col, k in enumerate((i, j)):
            sheet.paste(decode_image(*items[k])[0].convert("RGB").resize((tile, tile)), (col * (tile + 10), top + 14))
        draw.text((2, top), f"{corr(i, j, 16):.2f} {corr(i, j, 64):.2f} {corr(i, j, 128):.2f} "
                            f"{classes[labels[i]][:8]}/{classes[labels[j]][:8]}", fill=(200, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=[*TEXTURES, "pacs-sketch", "fer2013", "cifar10-cat-dog-horse"])
    parser.add_argument("--sweep-bits", type=int, nargs="+", default=[NEAR_DUPLICATE_BITS, 8, 12],
                        help="dHash thresholds tried on the texture sets (others: the default only)")
    parser.add_argument("--sheets", type=Path, default=Path("/tmp/check-duplicates"))
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "check-duplicates.json")
    args = parser.parse_args()
    results = {}
    for name in args.data:
        bits = args.sweep_bits if name in TEXTURES else [NEAR_DUPLICATE_BITS]
        results[name] = measure(name, bits, args.sheets)
        print(name, json.dumps(results[name]), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "machine": f"{platform.machine()}, 2-core shared CPU, no GPU", "old": f"{OLD_SIDE}x{OLD_SIDE} corr >= {OLD_CORR}, "
        "connected components", "new": f"64x64 corr >= {NEAR_DUPLICATE_CORR}, pairs",
        "strict": f"identical pixels or {STRICT_SIDE}x{STRICT_SIDE} corr >= {STRICT_CORR}", "data": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
