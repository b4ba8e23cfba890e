#!/usr/bin/env python3
"""Write a small synthetic canonical dataset for clipcov (docs/formats.md).

Layout written to --out:
  data/shard-00000.parquet ...   columns id (utf8), image_embedding,
                                 text_embedding (FixedSizeList<f32|f16, d>)
  prompts.parquet                class_id (int64), name (utf8),
                                 text_embedding (FixedSizeList, 2 rows/class)

Model: K random unit class directions c_k. Each pair draws a class (with
unequal class sizes, so some classes are big), a shared latent
z = c_k + noise, then u = z + noise + gap, v = z + noise - gap (the
"modality gap"). A fraction of captions is mismatched: v is built from
another class. Embeddings are written un-normalised (random scale) so the
reader's normalisation is exercised. Everything is seeded.
"""
import argparse
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def fixed_list(mat, f16):
    """[n, d] matrix -> FixedSizeList<float16|float32, d> array."""
    dt = np.float16 if f16 else np.float32
    flat = np.ascontiguousarray(mat, dtype=dt).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), mat.shape[1])


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--f16", action="store_true", help="float16 embeddings (default float32)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mismatch", type=float, default=0.1,
                    help="fraction of pairs whose caption comes from another class")
    ap.add_argument("--noise", type=float, default=0.6,
                    help="per-coordinate noise scale relative to 1/sqrt(d)")
    ap.add_argument("--int-ids", action="store_true", help="int64 ids instead of utf8")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    rng = np.random.default_rng(a.seed)
    n, d, K = a.rows, a.dim, a.classes
    s = a.noise / np.sqrt(d)  # noise per coordinate, so |noise| ~ a.noise

    C = unit(rng.standard_normal((K, d)))
    gap = 0.3 * unit(rng.standard_normal(d))

    # Unequal class sizes (Dirichlet weights), so the tiling of big classes
    # and the refresh logic of classes with many picks both get exercised.
    p = rng.dirichlet(np.full(K, 0.7))
    y = rng.choice(K, size=n, p=p)
    z = C[y] + s * rng.standard_normal((n, d))
    u = z + 0.5 * s * rng.standard_normal((n, d)) + gap
    y_txt = y.copy()
    mis = rng.random(n) < a.mismatch
    y_txt[mis] = rng.integers(0, K, size=mis.sum())
    z_txt = np.where(mis[:, None], C[y_txt] + s * rng.standard_normal((n, d)), z)
    v = z_txt + 0.5 * s * rng.standard_normal((n, d)) - gap
    # Random positive scales: the tool must normalise.
    u *= rng.uniform(0.5, 3.0, size=(n, 1))
    v *= rng.uniform(0.5, 3.0, size=(n, 1))

    data_dir = os.path.join(a.out, "data")
    os.makedirs(data_dir, exist_ok=True)
    bounds = np.linspace(0, n, a.shards + 1).astype(int)
    for si in range(a.shards):
        lo, hi = bounds[si], bounds[si + 1]
        ids = (pa.array(np.arange(lo, hi, dtype=np.int64) * 7 + 13) if a.int_ids
               else pa.array([f"pair-{i:08d}" for i in range(lo, hi)]))
        t = pa.table({
            "id": ids,
            "image_embedding": fixed_list(u[lo:hi], a.f16),
            "text_embedding": fixed_list(v[lo:hi], a.f16),
            "caption": pa.array([f"caption of {i} (class {y_txt[i]})" for i in range(lo, hi)]),
        })
        pq.write_table(t, os.path.join(data_dir, f"shard-{si:05d}.parquet"))

    # Prompts: non-contiguous class_ids written in shuffled order, 2 template
    # rows per class (class direction + small noise + text-side gap, unnormalised).
    class_ids = np.sort(rng.choice(10 * K + 10, size=K, replace=False)).astype(np.int64)
    rows = []
    for k in range(K):
        for _ in range(2):
            e = (C[k] + 0.3 * s * rng.standard_normal(d) - gap) * rng.uniform(0.5, 2.0)
            rows.append((class_ids[k], f"class {class_ids[k]}", e))
    perm = rng.permutation(len(rows))
    rows = [rows[i] for i in perm]
    pt = pa.table({
        "class_id": pa.array([r[0] for r in rows], type=pa.int64()),
        "name": pa.array([r[1] for r in rows]),
        "text_embedding": fixed_list(np.stack([r[2] for r in rows]), a.f16),
    })
    pq.write_table(pt, os.path.join(a.out, "prompts.parquet"))
    print(f"wrote {n} rows x d={d}, {K} classes, {a.shards} shards "
          f"({'f16' if a.f16 else 'f32'}) to {a.out}/data, prompts to {a.out}/prompts.parquet")


if __name__ == "__main__":
    main()
