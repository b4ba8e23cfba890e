#!/usr/bin/env python3
"""NumPy reference implementation of ClipCov selection (docs/algorithm.md).

Two roles:
  * the independent float64 reference that the Rust tool is checked against;
  * the "authors' approach" NumPy baseline for benchmarks (dense per-class
    n_k x n_k similarity blocks in RAM, chunked over rows only).

Usage:
  python3 benches/numpy_clipcov.py --data DIR --prompts FILE \
      (--fraction F | --budget B) [--tau 0|none|<x>] [--refresh auto|N] \
      [--weights w_cross,w_easy,w_label,w_between] [--dtype float64|float32] \
      [--image-col image_embedding] [--text-col text_embedding] [--id-col id] \
      [--assign image|text] [--naive] --out OUT.csv

Output CSV columns: id,rank,row,class,score,easy,cross,label,between in rank
order; class is k, the position of the class in class_id order (spec's y_i);
score is the score at pick time; the terms are the initial ones.
Stage timings go to stderr. Exit status: 2 usage, 65 bad data, 74 I/O.
"""
import argparse
import csv
import heapq
import math
import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# Max number of float elements in one similarity tile (rows x n_k). 2^23
# float64 = 64 MiB per tile: big classes are processed in row chunks so the
# whole n_k x n_k block never has to sit in memory at once.
TILE_ELEMS = 1 << 23

EXIT_USAGE, EXIT_DATA, EXIT_IO = 2, 65, 74


class DataError(Exception):
    pass


class Timer:
    """Prints '[clipcov-numpy] stage: 1.234 s' to stderr per stage."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.last = self.t0
        self.stages = []

    def lap(self, name):
        now = time.perf_counter()
        self.stages.append((name, now - self.last))
        print(f"[numpy_clipcov] {name}: {now - self.last:.3f} s", file=sys.stderr, flush=True)
        self.last = now

    def total(self):
        print(f"[numpy_clipcov] total: {time.perf_counter() - self.t0:.3f} s",
              file=sys.stderr, flush=True)


# ---------------------------------------------------------------- reading

FLOAT_TYPES = (pa.float16(), pa.float32(), pa.float64())


def embedding_matrix(col, path, name, dtype):
    """Arrow (Fixed)List<float> column -> numpy [rows, d] in `dtype`."""
    t = col.type
    fixed = pa.types.is_fixed_size_list(t)
    if not (fixed or pa.types.is_list(t) or pa.types.is_large_list(t)):
        raise DataError(f"{path}: column {name!r} has type {t}, expected a list of floats")
    if t.value_type not in FLOAT_TYPES:
        raise DataError(f"{path}: column {name!r} has element type {t.value_type}, "
                        "expected float16, float32 or float64")
    parts, d, base = [], (t.list_size if fixed else None), 0
    for chunk in col.chunks:
        if chunk.null_count:
            bad = base + int(np.flatnonzero(chunk.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{path}: row {bad} (in file), column {name!r}: null embedding")
        if not fixed and len(chunk):
            lens = chunk.value_lengths().to_numpy(zero_copy_only=False)
            if d is None:
                d = int(lens[0])
            if (lens != d).any():
                bad = base + int(np.flatnonzero(lens != d)[0])
                raise DataError(f"{path}: row {bad} (in file), column {name!r}: "
                                f"embedding length {lens[bad - base]} differs from {d}")
        vals = chunk.flatten()  # respects slice offsets, unlike .values
        if vals.null_count:
            raise DataError(f"{path}: column {name!r}: null embedding component")
        parts.append(vals.to_numpy(zero_copy_only=False).astype(dtype, copy=False))
        base += len(chunk)
    if d is None:  # empty file with a variable-size list column
        d = 0
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype)
    return flat.reshape(-1, d) if d else flat.reshape(col.length(), 0)


def normalise_rows(X, what):
    """L2-normalise in place (in X's dtype); zero or non-finite rows are data errors."""
    finite = np.isfinite(X).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise DataError(f"{what(i)}: non-finite component")
    norms = np.linalg.norm(X, axis=1)
    if (norms == 0).any():
        i = int(np.flatnonzero(norms == 0)[0])
        raise DataError(f"{what(i)}: zero vector")
    X /= norms[:, None]
    return X


def list_parquet(root):
    """All *.parquet under root, sorted byte-wise by path relative to root."""
    if os.path.isfile(root):
        return [root]
    found = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(".parquet"):
                found.append(os.path.relpath(os.path.join(dirpath, f), root))
    found.sort(key=os.fsencode)  # byte-wise, not locale or natural order
    return [os.path.join(root, f) for f in found]


def read_dataset(root, id_col, img_col, txt_col, dtype):
    files = list_parquet(root)
    if not files:
        raise DataError(f"{root}: no *.parquet files found")
    ids, Us, Vs, origin = [], [], [], []  # origin: (first global row, file) for messages
    row0, d = 0, None
    for path in files:
        try:
            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
            for c in (id_col, img_col, txt_col):
                if c not in names:
                    raise DataError(f"{path}: missing column {c!r} (has {names})")
            t = pf.read(columns=[id_col, img_col, txt_col])
        except DataError:
            raise
        except OSError as e:
            raise DataError(f"{path}: unreadable parquet: {e}")
        idc = t.column(id_col)
        if not (pa.types.is_string(idc.type) or pa.types.is_large_string(idc.type)
                or idc.type in (pa.int64(), pa.uint64())):
            raise DataError(f"{path}: column {id_col!r} has type {idc.type}, "
                            "expected utf8, large_utf8, int64 or uint64")
        if idc.null_count:
            raise DataError(f"{path}: column {id_col!r}: null id")
        U = embedding_matrix(t.column(img_col), path, img_col, dtype)
        V = embedding_matrix(t.column(txt_col), path, txt_col, dtype)
        for M, c in ((U, img_col), (V, txt_col)):
            if t.num_rows and d is not None and M.shape[1] != d:
                raise DataError(f"{path}: column {c!r} has d={M.shape[1]}, expected {d}")
            if t.num_rows and d is None:
                d = M.shape[1]
        origin.append((row0, path))
        ids.append(idc.cast(pa.large_string()) if pa.types.is_string(idc.type) else idc)
        Us.append(U)
        Vs.append(V)
        row0 += t.num_rows
    if row0 == 0:
        raise DataError(f"{root}: dataset has no rows")
    id_types = {str(a.type) for a in ids}
    if len(id_types) > 1:
        raise DataError(f"{root}: id column {id_col!r} has different types across files: {id_types}")
    id_arr = pa.chunked_array([c for a in ids for c in a.chunks], type=ids[0].type)
    U = np.concatenate(Us)
    V = np.concatenate(Vs)
    del Us, Vs

    def where(col):
        def f(i):
            # Map a global row back to its file for an actionable message.
            k = max(j for j, (r, _) in enumerate(origin) if r <= i)
            return f"{origin[k][1]}: row {i - origin[k][0]} (global row {i}), column {col!r}"
        return f

    normalise_rows(U, where(img_col))
    normalise_rows(V, where(txt_col))
    if pc.count_distinct(id_arr).as_py() != len(id_arr):
        raise DataError(f"{root}: duplicate ids in column {id_col!r}")
    return id_arr.to_pylist(), U, V, files


def read_prompts(path, dtype):
    """Class embeddings: per class_id, normalise rows, average, normalise; ordered by class_id."""
    try:
        t = pq.read_table(path)
    except OSError as e:
        raise DataError(f"{path}: unreadable parquet: {e}")
    for c in ("class_id", "text_embedding"):
        if c not in t.column_names:
            raise DataError(f"{path}: missing column {c!r}")
    cid = t.column("class_id").to_numpy()
    E = embedding_matrix(t.column("text_embedding"), path, "text_embedding", dtype)
    normalise_rows(E, lambda i: f"{path}: row {i}, column 'text_embedding'")
    classes = np.unique(cid)  # sorted: k = position in class_id order
    C = np.empty((len(classes), E.shape[1]), dtype)
    for k, c in enumerate(classes):
        m = E[cid == c].mean(axis=0)  # rows in file order
        C[k] = m / np.linalg.norm(m)
    return classes, C


# ---------------------------------------------------------------- terms

def phi_inplace(S, tau):
    """phi(s) = s if s > tau else 0, in place; tau None = identity."""
    if tau is None:
        return S
    if tau == 0:
        np.maximum(S, 0, out=S)  # same sums as the masked form (-0.0 vs 0.0 only)
    else:
        S[S <= tau] = 0
    return S


def row_chunks(n, width):
    """Row blocks so that block_rows * width <= TILE_ELEMS."""
    b = max(1, TILE_ELEMS // max(1, width))
    for lo in range(0, n, b):
        yield lo, min(n, lo + b)


def assign_classes(X, C):
    """y_i = argmax_k <x_i, c_k>; np.argmax returns the first max = smallest k."""
    y = np.empty(len(X), np.int64)
    for lo, hi in row_chunks(len(X), len(C)):
        y[lo:hi] = np.argmax(X[lo:hi] @ C.T, axis=1)
    return y


def class_members(y, K):
    """members[k] = rows of class k in ascending row order."""
    order = np.argsort(y, kind="stable")
    bounds = np.searchsorted(y[order], np.arange(K + 1))
    return [order[bounds[k]:bounds[k + 1]] for k in range(K)]


def between_term(U, V, y, members, dtype):
    K = len(members)
    nonempty = np.array([len(m) > 0 for m in members])
    Kp = int(nonempty.sum())
    between = np.zeros(len(U), dtype)
    if Kp <= 1:
        return between
    d = U.shape[1]
    MI = np.zeros((K, d), dtype)
    MT = np.zeros((K, d), dtype)
    for k, m in enumerate(members):
        if len(m):
            for M, X in ((MI, U), (MT, V)):
                s = X[m].sum(axis=0)
                nrm = np.linalg.norm(s)
                M[k] = s / nrm if nrm > 0 else 0  # a zero class sum has no direction
    ne = np.flatnonzero(nonempty)
    pos = np.full(K, -1)
    pos[ne] = np.arange(Kp)  # column of each class among the non-empty ones
    MTn, MIn = MT[ne], MI[ne]
    for lo, hi in row_chunks(len(U), Kp):
        A = np.maximum(U[lo:hi] @ MTn.T, 0)
        A += np.maximum(V[lo:hi] @ MIn.T, 0)
        A[np.arange(hi - lo), pos[y[lo:hi]]] = 0  # exclude l == k
        between[lo:hi] = A.sum(axis=1) / (Kp - 1)
    return between


def cross_term(U, V, members, tau, dtype, dense_none=False):
    """cross_i = (1/n_k) sum_{j in V_k} phi(<u_i,v_j>) + phi(<u_j,v_i>), j = i included.

    Dense (authors' approach): per class, S = U_k V_k^T in row blocks; the
    row sums give sum_j phi(<u_i,v_j>), the column sums accumulate
    sum_i phi(<u_i,v_j>) which is the second term for row j.
    tau None uses the linear form unless dense_none is set.
    """
    cross = np.zeros(len(U), dtype)
    for m in members:
        nk = len(m)
        if nk == 0:
            continue
        Uk, Vk = U[m], V[m]
        if tau is None and not dense_none:
            cross[m] = (Uk @ Vk.sum(axis=0) + Vk @ Uk.sum(axis=0)) / nk
            continue
        rows = np.empty(nk, dtype)
        cols = np.zeros(nk, dtype)
        for lo, hi in row_chunks(nk, nk):
            S = phi_inplace(Uk[lo:hi] @ Vk.T, tau)
            rows[lo:hi] = S.sum(axis=1)
            cols += S.sum(axis=0)
        cross[m] = (rows + cols) / nk
    return cross


# ---------------------------------------------------------------- greedy

class ClassState:
    __slots__ = ("members", "n", "c", "new", "sel", "queue", "qpos")

    def __init__(self, members):
        self.members = members  # ascending row indices
        self.n = len(members)
        self.c = 0          # picks so far (c_k)
        self.new = []       # picks since last refresh (new_k)
        self.sel = []       # all picks (sel_k)
        self.queue = None   # fast path: unselected members in pick order
        self.qpos = 0


class Greedy:
    """Spec section 3. The refresh is shared by the naive and fast loops, so
    both see bit-identical score updates and must agree exactly."""

    def __init__(self, U, V, y, members, s, cross, label, tau, w, R):
        self.U, self.V, self.y = U, V, y
        self.st = [ClassState(m) for m in members]
        self.s = s  # current scores, updated in place
        self.cross, self.label, self.tau, self.w, self.R = cross, label, tau, w, R
        self.selected = np.zeros(len(s), bool)
        self.picks, self.pick_scores = [], []

    def take(self, i):
        """Step 1 bookkeeping; returns True if class y_i was refreshed."""
        self.picks.append(i)
        self.pick_scores.append(self.s[i])
        self.selected[i] = True
        st = self.st[self.y[i]]
        st.c += 1
        st.new.append(i)
        st.sel.append(i)
        if st.c % self.R == 0:
            self.refresh(st)
            return True
        return False

    def refresh(self, st):
        w_cross, _, w_label, _ = self.w
        m = st.members
        unsel = m[~self.selected[m]]
        new = np.array(st.new)
        if len(unsel):
            red = np.empty(len(unsel), self.s.dtype)
            if self.tau is None:  # linear form: sum_j <u_i,v_j> = <u_i, sum_j v_j>
                sv, su = self.V[new].sum(axis=0), self.U[new].sum(axis=0)
                red[:] = self.U[unsel] @ sv + self.V[unsel] @ su
            else:
                Vn, Un = self.V[new], self.U[new]
                for lo, hi in row_chunks(len(unsel), len(new)):
                    blk = unsel[lo:hi]
                    A = phi_inplace(self.U[blk] @ Vn.T, self.tau)   # phi(<u_i, v_j>)
                    A += phi_inplace(self.V[blk] @ Un.T, self.tau)  # phi(<u_j, v_i>)
                    red[lo:hi] = A.sum(axis=1)
            # Cross saturation over all the class's picks (sel_k), label
            # saturation over the picks since the last refresh (new_k), as in
            # the authors' notebook.
            sat = (w_cross * self.cross[np.array(st.sel)].sum()
                   + w_label * self.label[new].sum())
            self.s[unsel] -= w_cross * (red / st.n)   # redundancy with new picks
            self.s[unsel] -= sat / st.n               # class saturation
        st.new = []

    def run_naive(self, B):
        """Literal global argmax over unselected rows, O(B*N)."""
        for _ in range(B):
            masked = np.where(self.selected, -np.inf, self.s)
            self.take(int(np.argmax(masked)))  # first max = smallest row index

    def _queue(self, st):
        """Unselected members ordered by (score desc, row asc). Valid until the
        class's next refresh, since only a refresh changes its scores."""
        m = st.members
        m = m[~self.selected[m]]
        st.queue = m[np.lexsort((m, -self.s[m]))]
        st.qpos = 0

    def run_fast(self, B):
        """k-way merge: each class's scores are static between its refreshes,
        so the global argmax is the max over classes of each class's best
        unselected member; a heap keyed (-score, row) gives the same ties."""
        heap = []
        for k, st in enumerate(self.st):
            if st.n:
                self._queue(st)
                i = st.queue[0]
                heap.append((-float(self.s[i]), int(i), k))
        heapq.heapify(heap)
        while len(self.picks) < B and heap:
            _, i, k = heapq.heappop(heap)
            st = self.st[k]
            if self.take(i):
                self._queue(st)
            else:
                st.qpos += 1
            if st.qpos < len(st.queue):
                j = st.queue[st.qpos]
                heapq.heappush(heap, (-float(self.s[j]), int(j), k))


# ---------------------------------------------------------------- main

def parse_tau(x):
    if x.lower() == "none":
        return None
    try:
        return float(x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tau must be a number or 'none', got {x!r}")


def parse_weights(x):
    try:
        w = [float(t) for t in x.split(",")]
    except ValueError:
        w = []
    if len(w) != 4:
        raise argparse.ArgumentTypeError("--weights needs 4 numbers: w_cross,w_easy,w_label,w_between")
    return tuple(w)


def fmt(x):
    return repr(float(x))  # shortest round-trip repr: no precision lost in CSV


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="dataset folder (searched recursively) or one file")
    ap.add_argument("--prompts", required=True, help="prompts parquet (class_id, name, text_embedding)")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--fraction", type=float)
    g.add_argument("--budget", type=int)
    ap.add_argument("--tau", type=parse_tau, default=0.0, help="threshold, or 'none' (default 0)")
    ap.add_argument("--refresh", default="auto",
                    help="refresh period R: 'auto' = max(1, round(0.705 * B / K')) (default), or a number")
    ap.add_argument("--weights", type=parse_weights, default=(1.0, 2.0, 0.5, 1.0),
                    help="w_cross,w_easy,w_label,w_between (default 1,2,0.5,1)")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--image-col", default="image_embedding")
    ap.add_argument("--text-col", default="text_embedding")
    ap.add_argument("--id-col", default="id")
    ap.add_argument("--assign", choices=["image", "text"], default="image",
                    help="embed used for the class assignment (default image)")
    ap.add_argument("--naive", action="store_true", help="literal O(B*N) global argmax loop")
    ap.add_argument("--dense-none", action="store_true",
                    help="with --tau none, compute cross with the dense blocks instead of the linear form")
    ap.add_argument("--out", required=True, help="output CSV")
    a = ap.parse_args()
    if a.refresh != "auto" and (not a.refresh.isdigit() or int(a.refresh) < 1):
        ap.error("--refresh must be 'auto' or a whole number >= 1")
    if a.fraction is not None and not (0 <= a.fraction <= 1):
        ap.error("--fraction must be in [0, 1]")
    if a.budget is not None and a.budget < 0:
        ap.error("--budget must be >= 0")
    dtype = np.dtype(a.dtype)
    w_cross, w_easy, w_label, w_between = a.weights

    T = Timer()
    try:
        ids, U, V, files = read_dataset(a.data, a.id_col, a.image_col, a.text_col, dtype)
        N, d = U.shape
        T.lap(f"read {N} rows x d={d} from {len(files)} files")
        class_ids, C = read_prompts(a.prompts, dtype)
        if C.shape[1] != d:
            raise DataError(f"{a.prompts}: prompt d={C.shape[1]} differs from data d={d}")
        K = len(C)
        T.lap(f"prompts ({K} classes)")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_DATA)
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_IO)

    B = math.floor(a.fraction * N) if a.fraction is not None else a.budget
    B = min(B, N)

    y = assign_classes(U if a.assign == "image" else V, C)
    members = class_members(y, K)
    T.lap(f"assign ({sum(len(m) > 0 for m in members)} non-empty classes, "
          f"largest {max(len(m) for m in members)})")

    easy = np.einsum("ij,ij->i", U, V)
    label = np.einsum("ij,ij->i", V, C[y])
    between = between_term(U, V, y, members, dtype)
    T.lap("easy, label, between")
    cross = cross_term(U, V, members, a.tau, dtype, a.dense_none)
    T.lap(f"cross (tau={'none' if a.tau is None else a.tau})")

    if a.refresh == "auto":
        # Half away from zero, as the spec's round (Python's round() is to even).
        nonempty = sum(len(m) > 0 for m in members)
        a.refresh = max(1, math.floor(0.705 * B / max(nonempty, 1) + 0.5))
    else:
        a.refresh = int(a.refresh)
    s = w_cross * cross + w_easy * easy + w_label * label - w_between * between
    gr = Greedy(U, V, y, members, s.copy(), cross, label, a.tau, a.weights, a.refresh)
    if a.naive:
        gr.run_naive(B)
    else:
        gr.run_fast(B)
    T.lap(f"greedy ({'naive' if a.naive else 'fast'}, B={B}, R={a.refresh})")

    tmp = a.out + ".tmp"
    try:
        with open(tmp, "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["id", "rank", "row", "class", "score", "easy", "cross", "label", "between"])
            for r, (i, sc) in enumerate(zip(gr.picks, gr.pick_scores)):
                wr.writerow([ids[i], r, i, int(y[i]), fmt(sc), fmt(easy[i]), fmt(cross[i]),
                             fmt(label[i]), fmt(between[i])])
        os.replace(tmp, a.out)  # only a complete file appears under the final name
    except OSError as e:
        print(f"error: writing {a.out}: {e}", file=sys.stderr)
        sys.exit(EXIT_IO)
    T.lap(f"write {a.out}")
    T.total()


if __name__ == "__main__":
    main()
