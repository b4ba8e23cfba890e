#!/usr/bin/env python3
"""Self-test of benches/numpy_clipcov.py on small synthetic data.

  python3 benches/selftest_numpy_clipcov.py [--keep DIR]

Checks:
  1. fast (heap merge) and --naive (literal global argmax) give byte-identical
     CSVs, over tau in {0, none, 0.1, -0.2}, R in {1, 7, 200}, f16/f32 input,
     dtype float64/float32, and a dataset with exact duplicate rows (ties);
  2. a separate, deliberately literal re-implementation (Python loops over
     pairs, its own reader, sharing no code with numpy_clipcov.py) reproduces
     the ids, order, and every term on a few hundred rows;
  3. tau none: linear form == dense blocks (to 1e-12);
  4. bad data exits 65.
Ends with a 'N passed, N failed' line.
"""
import argparse
import csv
import math
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
passed = failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {what}")
    else:
        failed += 1
        print(f"FAIL {what}")


def run(*args, expect=0):
    p = subprocess.run([PY, *args], capture_output=True, text=True)
    if p.returncode != expect:
        print(p.stdout, p.stderr, file=sys.stderr)
    return p.returncode


def make(out, **kw):
    shutil.rmtree(out, ignore_errors=True)  # --keep may point at an old run
    args = [os.path.join(HERE, "make_dataset.py"), "--out", out]
    for k, v in kw.items():
        if v is True:
            args.append(f"--{k}")
        else:
            args += [f"--{k}", str(v)]
    assert run(*args) == 0


def select(data, out, *extra, expect=0):
    return run(os.path.join(HERE, "numpy_clipcov.py"), "--data", os.path.join(data, "data"),
               "--prompts", os.path.join(data, "prompts.parquet"), "--out", out, *extra,
               expect=expect)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def same_file(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


# ------------------------------------------------ literal re-implementation

def literal(data_dir, prompts, frac, tau, R, w):
    """Straight transcription of docs/algorithm.md with Python loops over pairs."""
    files = sorted((os.path.relpath(os.path.join(dp, f), data_dir)
                    for dp, _, fs in os.walk(data_dir) for f in fs if f.endswith(".parquet")),
                   key=os.fsencode)
    ids, U, V = [], [], []
    for f in files:
        t = pq.read_table(os.path.join(data_dir, f))
        ids += [str(x) for x in t.column("id").to_pylist()]
        U += [np.array(x, np.float64) for x in t.column("image_embedding").to_pylist()]
        V += [np.array(x, np.float64) for x in t.column("text_embedding").to_pylist()]
    U = [x / math.sqrt(sum(c * c for c in x)) for x in U]
    V = [x / math.sqrt(sum(c * c for c in x)) for x in V]
    pt = pq.read_table(prompts)
    groups = {}
    for cid, e in zip(pt.column("class_id").to_pylist(), pt.column("text_embedding").to_pylist()):
        e = np.array(e, np.float64)
        groups.setdefault(cid, []).append(e / np.linalg.norm(e))
    C = []
    for cid in sorted(groups):
        m = sum(groups[cid]) / len(groups[cid])
        C.append(m / np.linalg.norm(m))
    N, K = len(U), len(C)
    phi = (lambda s: s) if tau is None else (lambda s: s if s > tau else 0.0)
    dot = lambda a, b: float(np.dot(a, b))

    y = []
    for i in range(N):
        sims = [dot(U[i], c) for c in C]
        y.append(max(range(K), key=lambda k: (sims[k], -k)))  # ties -> smallest k
    Vk = {k: [i for i in range(N) if y[i] == k] for k in range(K)}
    nonempty = [k for k in range(K) if Vk[k]]
    Kp = len(nonempty)
    mI = {k: sum(U[j] for j in Vk[k]) for k in nonempty}
    mT = {k: sum(V[j] for j in Vk[k]) for k in nonempty}
    mI = {k: x / np.linalg.norm(x) for k, x in mI.items()}
    mT = {k: x / np.linalg.norm(x) for k, x in mT.items()}

    easy, cross, label, between = {}, {}, {}, {}
    for i in range(N):
        k = y[i]
        nk = len(Vk[k])
        easy[i] = dot(U[i], V[i])
        cross[i] = sum(phi(dot(U[i], V[j])) + phi(dot(U[j], V[i])) for j in Vk[k]) / nk
        label[i] = dot(V[i], C[k])
        between[i] = 0.0 if Kp == 1 else sum(
            max(0.0, dot(U[i], mT[l])) + max(0.0, dot(V[i], mI[l]))
            for l in nonempty if l != k) / (Kp - 1)
    wc, we, wl, wb = w
    s = {i: wc * cross[i] + we * easy[i] + wl * label[i] - wb * between[i] for i in range(N)}

    B = min(math.floor(frac * N), N)
    S, scores = [], []
    unsel = set(range(N))
    c = {k: 0 for k in range(K)}
    new = {k: [] for k in range(K)}
    sel = {k: [] for k in range(K)}
    while len(S) < B:
        i = max(unsel, key=lambda r: (s[r], -r))  # ties -> smallest row
        S.append(i)
        scores.append(s[i])
        unsel.discard(i)
        k = y[i]
        c[k] += 1
        new[k].append(i)
        sel[k].append(i)
        if c[k] % R == 0:
            nk = len(Vk[k])
            # cross saturation over sel_k, label saturation over new_k (the notebook's rule)
            sat = sum(wc * cross[j] for j in sel[k]) + sum(wl * label[j] for j in new[k])
            for r in Vk[k]:
                if r in unsel:
                    s[r] -= wc * sum(phi(dot(U[r], V[j])) + phi(dot(U[j], V[r])) for j in new[k]) / nk
                    s[r] -= sat / nk
            new[k] = []
    return [dict(id=ids[i], rank=r, row=i, cls=y[i], score=scores[r], easy=easy[i],
                 cross=cross[i], label=label[i], between=between[i]) for r, i in enumerate(S)]


def compare_literal(got, want, what, tol=1e-9):
    ok = len(got) == len(want)
    worst = 0.0
    for g, w in zip(got, want):
        ok &= g["id"] == w["id"] and int(g["row"]) == w["row"] and int(g["class"]) == w["cls"]
        for t in ("score", "easy", "cross", "label", "between"):
            worst = max(worst, abs(float(g[t]) - w[t]))
    check(ok and worst < tol, f"{what}: same ids/order/classes as literal, max term diff {worst:.2e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="work in this folder and keep it")
    a = ap.parse_args()
    tmp = a.keep or tempfile.mkdtemp(prefix="clipcov_selftest_")
    os.makedirs(tmp, exist_ok=True)

    f32, f16 = os.path.join(tmp, "f32"), os.path.join(tmp, "f16")
    make(f32, rows=3000, dim=32, classes=10, shards=3, seed=1)
    make(f16, rows=3000, dim=32, classes=10, shards=4, seed=2, f16=True)

    # 1. fast == naive
    for data in (f32, f16):
        for tau in ("0", "none", "0.1", "-0.2"):
            for R in ("1", "7", "200"):
                for dt in ("float64", "float32"):
                    if dt == "float32" and (R != "7" or tau not in ("0", "none")):
                        continue
                    fa, na = os.path.join(tmp, "fast.csv"), os.path.join(tmp, "naive.csv")
                    args = ("--fraction", "0.4", "--tau", tau, "--refresh", R, "--dtype", dt)
                    ok = select(data, fa, *args) == 0 and select(data, na, *args, "--naive") == 0
                    check(ok and same_file(fa, na),
                          f"fast == naive: {os.path.basename(data)} tau={tau} R={R} {dt}")
    # Whole dataset selected, non-default weights.
    fa, na = os.path.join(tmp, "fast.csv"), os.path.join(tmp, "naive.csv")
    args = ("--budget", "5000", "--refresh", "13", "--weights", "0.7,1,2,0.3")
    ok = select(f32, fa, *args) == 0 and select(f32, na, *args, "--naive") == 0
    check(ok and same_file(fa, na) and len(read_csv(fa)) == 3000, "fast == naive: budget > N, weights")

    # Ties: every pair appears twice (same embeddings, different ids), so
    # scores tie exactly and only the row-index rule orders them.
    dup = os.path.join(tmp, "dup")
    make(dup, rows=600, dim=16, classes=5, shards=1, seed=3)
    t = pq.read_table(os.path.join(dup, "data", "shard-00000.parquet"))
    t2 = pa.concat_tables([t, t.set_column(0, "id", pa.array([f"dup-{i}" for i in range(t.num_rows)]))])
    os.remove(os.path.join(dup, "data", "shard-00000.parquet"))
    pq.write_table(t2, os.path.join(dup, "data", "a.parquet"), row_group_size=250)
    for tau in ("0", "none"):
        args = ("--fraction", "0.5", "--refresh", "9", "--tau", tau)
        ok = select(dup, fa, *args) == 0 and select(dup, na, *args, "--naive") == 0
        rows = read_csv(fa)
        tied = sum(float(rows[r]["score"]) == float(rows[r + 1]["score"]) for r in range(len(rows) - 1))
        check(ok and same_file(fa, na) and tied > 0, f"fast == naive with exact ties (tau={tau}, {tied} ties)")

    # 2. literal re-implementation on small data (f16 input, several shards,
    #    nested folder to exercise the recursive byte-wise file order).
    small = os.path.join(tmp, "small")
    make(small, rows=400, dim=12, classes=6, shards=3, seed=4, f16=True)
    nested = os.path.join(small, "data", "part=B")
    os.makedirs(nested)
    os.rename(os.path.join(small, "data", "shard-00000.parquet"), os.path.join(nested, "x.parquet"))
    for tau, R, w in ((0.0, 5, (1, 2, 0.5, 1)), (None, 4, (1, 2, 0.5, 1)),
                      (0.15, 3, (1.5, 1, 0.25, 2)), (0.0, 200, (1, 2, 0.5, 1))):
        args = ["--fraction", "0.6", "--refresh", str(R), "--tau", "none" if tau is None else str(tau),
                "--weights", ",".join(map(str, w))]
        ok = select(small, fa, *args) == 0
        check(ok, f"run small tau={tau} R={R}")
        want = literal(os.path.join(small, "data"), os.path.join(small, "prompts.parquet"), 0.6, tau, R, w)
        compare_literal(read_csv(fa), want, f"literal tau={tau} R={R} w={w}")

    # 3. tau none: linear form vs dense blocks.
    ok = select(f32, fa, "--fraction", "0.3", "--tau", "none") == 0 and \
        select(f32, na, "--fraction", "0.3", "--tau", "none", "--dense-none") == 0
    A, Bv = read_csv(fa), read_csv(na)
    same_ids = [r["id"] for r in A] == [r["id"] for r in Bv]
    diff = max(abs(float(x[t]) - float(y[t])) for x, y in zip(A, Bv) for t in ("cross", "score"))
    check(ok and same_ids and diff < 1e-12, f"tau none: linear == dense (max diff {diff:.1e})")

    # 4. bad data: a zero vector exits 65.
    bad = os.path.join(tmp, "bad")
    make(bad, rows=50, dim=8, classes=3, shards=1, seed=5)
    p = os.path.join(bad, "data", "shard-00000.parquet")
    t = pq.read_table(p)
    emb = np.array(t.column("image_embedding").to_pylist(), np.float32)
    emb[17] = 0
    t = t.set_column(1, "image_embedding",
                     pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), 8))
    pq.write_table(t, p)
    check(select(bad, fa, "--fraction", "0.5", expect=65) == 65, "zero vector -> exit 65")

    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
