"""The stage functions against an independent NumPy computation of the
spec's formulas on small data (tests/reference.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import clipcov
import reference as ref
from conftest import run_cli


def fsl(x, t=pa.float32()):
    x = np.ascontiguousarray(x)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), t), x.shape[1])


def rows(a):
    a = a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a
    return np.asarray(a.values.to_numpy(zero_copy_only=False)).reshape(len(a), -1)


def data(n=300, k=4, d=12, seed=0, dtype=np.float32):
    """Rows that lean towards one of k directions (so classes are uneven)
    with a norm far from 1 (so normalising matters)."""
    g = np.random.default_rng(seed)
    c = ref.unit(g.normal(size=(k, d)))
    y = g.integers(0, k, n)
    u = (c[y] + 0.8 * g.normal(size=(n, d))) * 3.0
    v = (c[y] + 0.8 * g.normal(size=(n, d))) * 0.5
    batch = pa.RecordBatch.from_arrays(
        [pa.array([f"r{i}" for i in range(n)]), fsl(u.astype(dtype), pa.from_numpy_dtype(dtype)),
         fsl(v.astype(dtype), pa.from_numpy_dtype(dtype))],
        names=["id", "image_embedding", "text_embedding"])
    return batch, c.astype(np.float32), u.astype(dtype), v.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_normalise_and_classes(dtype):
    batch, c, u, v = data(dtype=dtype)
    out, bad = clipcov.normalise(batch, fsl(c))
    assert bad == [] and out.num_rows == batch.num_rows
    uu, vv = ref.unit(u.astype(np.float64)), ref.unit(v.astype(np.float64))
    np.testing.assert_allclose(rows(out["image_embedding"]), uu, atol=2e-6)
    np.testing.assert_allclose(rows(out["text_embedding"]), vv, atol=2e-6)
    np.testing.assert_array_equal(out["class"].to_numpy(), ref.classes(uu, c.astype(np.float64)))
    # --assign text: classes from the captions.
    out_t, _ = clipcov.normalise(batch, fsl(c), assign_text=True)
    np.testing.assert_array_equal(out_t["class"].to_numpy(), ref.classes(vv, c.astype(np.float64)))


def test_normalise_ties_go_to_the_smallest_class():
    batch, c, u, v = data(n=50)
    twin = np.vstack([c[1], c[0], c[0], c[1]])  # classes 1 and 2 are the same direction
    out, _ = clipcov.normalise(batch, fsl(twin))
    assert 2 not in out["class"].to_numpy().tolist()
    assert 3 not in out["class"].to_numpy().tolist()


def test_normalise_bad_row_is_the_cli_message(cli, tmp_path):
    batch, c, u, v = data(n=40)
    u = u.copy()
    u[17] = 0.0
    batch = batch.set_column(1, "image_embedding", fsl(u))
    (tmp_path / "data").mkdir()
    shard = tmp_path / "data" / "part-0.parquet"
    pq.write_table(pa.Table.from_batches([batch]), shard)
    prompts = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"class_id": pa.array(range(len(c)), pa.int64()),
                             "name": [f"c{i}" for i in range(len(c))],
                             "text_embedding": fsl(c)}), prompts)
    r = run_cli(cli, "select", "--data", str(tmp_path / "data"), "--prompts", str(prompts),
                "--fraction", "0.5", "--out", str(tmp_path / "out"), "--quiet")
    assert r.returncode == 65
    with pytest.raises(clipcov.ClipcovError) as e:
        clipcov.normalise(batch, fsl(c), path=str(shard), prompts_path=str(prompts))
    assert r.stderr.strip() == f"clipcov: {e.value}"
    assert e.value.exit_code == 65
    # Skipped instead, with the reason.
    out, bad = clipcov.normalise(batch, fsl(c), on_bad_row="skip")
    assert bad == [(17, "image_embedding: zero vector")]
    assert 17 not in out["index"].to_numpy().tolist()


def staged(n=400, k=4, d=12, seed=1):
    """Normalised rows sorted by class (row order inside a class), the
    per-class arrays and the NumPy view of them."""
    batch, c, _, _ = data(n=n, k=k, d=d, seed=seed)
    out, _ = clipcov.normalise(batch, fsl(c))
    y = out["class"].to_numpy().astype(np.int64)
    u, v = rows(out["image_embedding"]).astype(np.float64), rows(out["text_embedding"]).astype(np.float64)
    order = np.argsort(y, kind="stable")
    per = {}
    for kk in range(k):
        idx = order[y[order] == kk]
        per[kk] = (idx, out["image_embedding"].take(pa.array(idx)), out["text_embedding"].take(pa.array(idx)))
    return c, u, v, y, per


def all_sums(per, k, d):
    sums = [clipcov.class_sums(per[kk][1], per[kk][2]) for kk in range(k)]
    si = fsl(np.array([s[0].to_numpy() for s in sums]), pa.float64())
    st = fsl(np.array([s[1].to_numpy() for s in sums]), pa.float64())
    return sums, si, st


def test_class_sums():
    c, u, v, y, per = staged()
    sums, _, _ = all_sums(per, len(c), u.shape[1])
    for kk, (su, sv) in enumerate(sums):
        np.testing.assert_allclose(su.to_numpy(), u[y == kk].sum(0), atol=1e-9)
        np.testing.assert_allclose(sv.to_numpy(), v[y == kk].sum(0), atol=1e-9)


@pytest.mark.parametrize("tau", ["0", "none", "0.1"])
def test_class_terms_against_numpy(tau):
    c, u, v, y, per = staged()
    k, d = c.shape
    _, si, st = all_sums(per, k, d)
    sizes = [len(per[kk][0]) for kk in range(k)]
    want = ref.terms(u, v, c.astype(np.float64), y, None if tau == "none" else float(tau))
    for kk in range(k):
        idx, img, txt = per[kk]
        got = clipcov.class_terms(img, txt, kk, fsl(c), si, st, sizes, tau=tau, tile_rows=32)
        g = np.column_stack([got[n].to_numpy() for n in ("easy", "cross", "label", "between")])
        np.testing.assert_allclose(g, want[idx], atol=1e-5)


def test_tile_blocks_reduce_to_the_unsplit_cross():
    c, u, v, y, per = staged(n=600, k=2)
    k, d = c.shape
    _, si, st = all_sums(per, k, d)
    sizes = [len(per[kk][0]) for kk in range(k)]
    idx, img, txt = per[0]
    n = len(idx)
    tile = 23
    blocks = clipcov.cross_blocks(n, tile)
    assert blocks == 8  # more stripes than blocks: each block holds several
    parts = [clipcov.cross_block(img, txt, "0", tile, b) for b in range(blocks)]
    sums = clipcov.cross_reduce(n, tile, parts)
    whole = clipcov.class_terms(img, txt, 0, fsl(c), si, st, sizes, tau="0", tile_rows=tile)
    split = clipcov.class_terms(img, txt, 0, fsl(c), si, st, sizes, tau="0", tile_rows=tile,
                                cross_sums=sums)
    assert whole.equals(split)  # to the bit
    want = ref.terms(u, v, c.astype(np.float64), y, 0.0)[idx, 1] * n
    np.testing.assert_allclose(sums.to_numpy(), want, atol=1e-4)


@pytest.mark.parametrize("tau", ["0", "none"])
def test_class_sequences_merged_equal_the_global_greedy(tau):
    c, u, v, y, per = staged(n=500, k=4)
    k, d = c.shape
    _, si, st = all_sums(per, k, d)
    sizes = [len(per[kk][0]) for kk in range(k)]
    budget, refresh = 120, 7
    t = ref.terms(u, v, c.astype(np.float64), y, None if tau == "none" else 0.0)
    want = ref.greedy(u, v, y, t, budget, refresh, None if tau == "none" else 0.0)
    seqs = []
    for kk in range(k):
        idx, img, txt = per[kk]
        terms = clipcov.class_terms(img, txt, kk, fsl(c), si, st, sizes, tau=tau, tile_rows=64)
        local, scores = clipcov.class_sequence(img, txt, terms, refresh, budget, tau=tau, tile_rows=64)
        seqs.append((idx[local.to_numpy()], scores.to_numpy()))
    kind, order = clipcov.merge([(r, s, True) for r, s in seqs], budget)
    assert kind == "done"
    got = [(int(seqs[s][0][p]), float(seqs[s][1][p])) for s, p in order]
    assert [g[0] for g in got] == [w[0] for w in want]
    np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], atol=1e-5)
    # A sequence cut short asks for more when the merge reaches its end.
    short = [(r[:3], s[:3], False) for r, s in seqs]
    assert clipcov.merge(short, budget)[0] == "more"


def test_write_subset_columns(tmp_path):
    terms = pa.RecordBatch.from_arrays([pa.array([0.5, 0.25]), pa.array([0.1, 0.2]),
                                        pa.array([0.3, 0.4]), pa.array([0.0, 0.1])],
                                       names=["easy", "cross", "label", "between"])
    files = clipcov.write_subset(tmp_path, pa.array(["a", "b"]), [5, 2], [1, 0], [2.0, 1.5], terms)
    assert [f[0] for f in files] == ["clipcov/subset.parquet", "clipcov/subset.csv"]
    t = pq.read_table(tmp_path / "clipcov" / "subset.parquet")
    assert t.column_names == ["id", "rank", "row", "class", "score", "easy", "cross", "label", "between"]
    assert t["id"].to_pylist() == ["a", "b"] and t["rank"].to_pylist() == [0, 1]
    assert t["row"].to_pylist() == [5, 2] and t["easy"].to_pylist() == [0.5, 0.25]
