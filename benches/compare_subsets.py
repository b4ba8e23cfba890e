#!/usr/bin/env python3
"""Compare two subset CSVs (columns id, rank, and optionally score/easy/cross/label/between).

  python3 benches/compare_subsets.py A.csv B.csv [B-manifest.json]

Prints JSON: sizes, jaccard of the id sets, Spearman correlation of `rank`
over the intersection, max and mean |A - B| of each float term over the intersection
(matched by id), and the first rank at which the two orders differ.
Given B's manifest (a `--cross-sample` run), also the max, mean and rms
|A - B| of `cross` over the common rows of the classes B sampled.
"""
import csv
import json
import sys

import numpy as np

TERMS = ("score", "easy", "cross", "label", "between")


def load(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    by_id = {}
    for r in rows:
        if r["id"] in by_id:
            sys.exit(f"{path}: duplicate id {r['id']!r}")
        by_id[r["id"]] = r
    order = [r["id"] for r in sorted(rows, key=lambda r: int(r["rank"]))]
    return by_id, order


def spearman(a, b):
    """Spearman rho = Pearson correlation of the ranks. `rank` values are
    unique within a file, so there are no ties to average."""
    if len(a) < 2:
        return None
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    rho = np.corrcoef(ra, rb)[0, 1]
    return None if np.isnan(rho) else float(rho)


def sampled_classes(manifest_path):
    """The classes a `--cross-sample` run estimated (score stage's report)."""
    with open(manifest_path) as f:
        m = json.load(f)
    score = next(s for s in m["stages"] if s["stage"] == "score")
    report = score.get("kernels", {}).get("cross_sample", {})
    return {str(c["class"]) for c in report.get("per_class", [])}


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    A, order_a = load(sys.argv[1])
    B, order_b = load(sys.argv[2])
    common = sorted(set(A) & set(B))
    union = set(A) | set(B)
    out = {
        "n_a": len(A),
        "n_b": len(B),
        "n_common": len(common),
        "jaccard": len(common) / len(union) if union else 1.0,
        "spearman_rank": spearman([int(A[i]["rank"]) for i in common],
                                  [int(B[i]["rank"]) for i in common]),
    }
    # Same order? Report where the selections first diverge (None = identical prefix).
    first = next((r for r, (x, y) in enumerate(zip(order_a, order_b)) if x != y), None)
    if first is None and len(order_a) != len(order_b):
        first = min(len(order_a), len(order_b))
    out["first_rank_differing"] = first
    diffs, means = {}, {}
    for t in TERMS:
        if common and t in A[common[0]] and t in B[common[0]]:
            a = np.array([float(A[i][t]) for i in common])
            b = np.array([float(B[i][t]) for i in common])
            diffs[t] = float(np.max(np.abs(a - b)))
            means[t] = float(np.mean(np.abs(a - b)))
    out["max_abs_diff"] = diffs
    out["mean_abs_diff"] = means
    # A cross-check of what the classes say, when both have them.
    if common and "class" in A[common[0]] and "class" in B[common[0]]:
        out["class_mismatches"] = sum(A[i]["class"] != B[i]["class"] for i in common)
    if len(sys.argv) == 4 and common and "class" in A[common[0]]:
        sampled = sampled_classes(sys.argv[3])
        rows = [i for i in common if A[i]["class"] in sampled]
        a = np.array([float(A[i]["cross"]) for i in rows])
        b = np.array([float(B[i]["cross"]) for i in rows])
        e = np.abs(a - b)
        out["cross_in_sampled_classes"] = {
            "classes": len(sampled),
            "common_rows": len(rows),
            "max_abs": float(e.max()) if rows else None,
            "mean_abs": float(e.mean()) if rows else None,
            "rms": float(np.sqrt((e**2).mean())) if rows else None,
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
