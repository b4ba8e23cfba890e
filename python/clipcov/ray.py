"""ClipCov on a Ray cluster, with the same subset as ``clipcov select``.

``select(data=..., prompts=..., fraction=..., out=..., **options)`` (or
``python -m clipcov.ray --data ... --prompts ... --fraction ... --out ...``)
joins the cluster named by ``RAY_ADDRESS`` (Ray's own convention) or starts a
local one, then:

1. **normalise** (Ray Data): one task per Parquet row group reads it,
   validates, normalises and classes its rows with ingest's code
   (:func:`clipcov.normalise`), and writes the rows of each class to
   class-partitioned Parquet in a staging folder (``OUT/.ray-staging-*``, or
   ``staging=`` a shared URL on a multi-node cluster);
2. **load + sums**: one task per class reads its partitions in canonical row
   order and sums its rows in that order (the CLI's order, to the bit);
3. **terms**: one task per class (:func:`clipcov.class_terms`); a class of
   more than ``split_rows`` rows (default 50,000) has its ``cross`` tiles cut
   into blocks (:func:`clipcov.cross_block`) over several tasks, reduced in
   the CLI's block order;
4. **greedy**: one task per class computes its pick sequence
   (:func:`clipcov.class_sequence`), long enough for its share of the budget
   and extended when the merge needs more;
5. **merge + write** on the driver (:func:`clipcov.merge`,
   :func:`clipcov.write_subset`): ``OUT/clipcov/subset.parquet``,
   ``subset.csv``, ``manifest.json`` and ``OUT/manifest.json``.

The staging folder is removed when the run ends. Ray retries a task whose
worker died (``max_retries``); a node lost for good fails the run with Ray's
error naming the task.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import uuid
import zlib
from typing import Any

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from . import _clipcov, select_flags
from . import ClipcovError

try:
    import ray
except ImportError as e:  # pragma: no cover - ray is an optional dependency
    raise ImportError("clipcov.ray needs Ray: pip install 'ray[data]'") from e

__all__ = ["select", "main"]

# Options of `clipcov select` the distributed run does not implement yet.
_UNSUPPORTED = {
    "keep_columns": "--keep-columns",
    "where": "--where",
    "train_csv": "--train-csv",
    "publish_to": "a URL --out",
}

_FAILPOINT = "CLIPCOV_RAY_FAILPOINT"
# Ids are checked for repeats in this many hash buckets, one task each.
_ID_BUCKETS = 16


def _log(msg: str) -> None:
    print(f"clipcov.ray: {msg}", file=sys.stderr, flush=True)


def _failpoint(stage: str, staging: str) -> None:
    """Kills this worker process once at `stage` when $CLIPCOV_RAY_FAILPOINT
    names it (tests: Ray must retry the task, the result must not change)."""
    if os.environ.get(_FAILPOINT) != stage:
        return
    marker = os.path.join(staging, f"failpoint-{stage}")
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    _log(f"failpoint {stage}: killing worker pid {os.getpid()}")
    os._exit(1)


# ------------------------------------------------------------- the tasks


def _normalise_item(item: dict, *, classes, cfg: dict, staging: str) -> dict:
    """One row group: normalise + class, then write each class's rows."""
    t0 = time.time()
    cols = cfg["columns"]
    pf = pq.ParquetFile(item["path"])
    table = pf.read_row_group(item["group"], columns=[cols["id"], cols["image"], cols["text"]])
    batch = table.combine_chunks().to_batches()
    batch = batch[0] if batch else pa.RecordBatch.from_pylist([], schema=table.schema)
    try:
        out, bad = _clipcov.normalise(
            batch, classes, path=item["path"], first_row_in_file=item["row_in_file"],
            prompts_path=cfg["prompts"], id_column=cols["id"], image_column=cols["image"],
            text_column=cols["text"], assign_text=cfg["assign_text"], on_bad_row=cfg["on_bad_row"])
    except ClipcovError as e:
        # Returned, not raised: the driver reports the first bad row in
        # canonical order, as the CLI does, whichever task failed first.
        return {"item": item["item"], "rows": 0, "counts": "{}", "bad": "[]",
                "error": json.dumps([str(e), getattr(e, "exit_code", 65)]),
                "seconds": time.time() - t0, "pid": os.getpid(),
                "node": ray.get_runtime_context().get_node_id()}
    index = out["index"]
    ids = batch.column(cols["id"]).take(index)
    if pa.types.is_integer(ids.type):
        ids = ids.cast(pa.uint64() if pa.types.is_unsigned_integer(ids.type) else pa.int64())
    else:
        ids = ids.cast(pa.string())
    rows = pa.compute.add(index, pa.scalar(item["first_row"], pa.uint64()))
    t = pa.table({"row": rows, "id": ids, "class": out["class"],
                  "image_embedding": out["image_embedding"], "text_embedding": out["text_embedding"]})
    counts: dict[int, int] = {}
    if t.num_rows:
        # (id, row) by a stable hash of the id, for the repeated-id check.
        bucket = pa.array([zlib.crc32(str(x).encode()) % _ID_BUCKETS for x in ids.to_pylist()], pa.int64())
        pairs = pa.table({"id": ids, "row": rows, "bucket": bucket})
        for b in pa.compute.unique(bucket).to_pylist():
            folder = os.path.join(staging, "ids", f"bucket={b}")
            os.makedirs(folder, exist_ok=True)
            part = pairs.filter(pa.compute.equal(pairs["bucket"], b)).drop_columns(["bucket"])
            pq.write_table(part, os.path.join(folder, f"part-{item['item']:08d}.parquet"),
                           compression="none")
        for k in pa.compute.unique(t["class"]).to_pylist():
            part = t.filter(pa.compute.equal(t["class"], k))
            folder = os.path.join(staging, f"class={k}")
            os.makedirs(folder, exist_ok=True)
            pq.write_table(part, os.path.join(folder, f"part-{item['item']:08d}.parquet"),
                           compression="none")
            counts[int(k)] = part.num_rows
    return {"item": item["item"], "rows": batch.num_rows, "counts": json.dumps(counts),
            "bad": json.dumps([(int(item["first_row"] + i), r) for i, r in bad]), "error": "",
            "seconds": time.time() - t0, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}


def _task_info(name: str, k: int, t0: float) -> dict:
    return {"task": name, "class": k, "seconds": time.time() - t0, "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id()}


@ray.remote(num_returns=2, max_retries=3)
def _load(k: int, staging: str):
    """Class k's rows in canonical row order, and its sums in that order."""
    t0 = time.time()
    folder = os.path.join(staging, f"class={k}")
    parts = sorted(os.listdir(folder))
    t = pa.concat_tables([pq.read_table(os.path.join(folder, p)) for p in parts]).combine_chunks()
    data = {c: t[c].combine_chunks() for c in ("row", "id", "image_embedding", "text_embedding")}
    su, sv = _clipcov.class_sums(data["image_embedding"], data["text_embedding"])
    return data, (su, sv, t.num_rows, _task_info("load", k, t0))


@ray.remote(max_retries=3, scheduling_strategy="SPREAD")
def _repeated(b: int, staging: str):
    """The earliest repeated id of bucket b: (its later row, the first
    occurrence's row, the id), or None."""
    folder = os.path.join(staging, "ids", f"bucket={b}")
    if not os.path.isdir(folder):
        return None
    t = pa.concat_tables([pq.read_table(os.path.join(folder, p)) for p in sorted(os.listdir(folder))])
    counts = t.group_by("id").aggregate([("row", "count")])
    ids = counts.filter(pa.compute.greater(counts["row_count"], 1))["id"]
    if len(ids) == 0:
        return None
    dup = t.filter(pa.compute.is_in(t["id"], value_set=ids)).sort_by([("id", "ascending"), ("row", "ascending")])
    best = None
    first_of: dict = {}
    for x, r in zip(dup["id"].to_pylist(), dup["row"].to_pylist()):
        if x not in first_of:
            first_of[x] = r
        elif best is None or r < best[0]:
            best = (r, first_of[x], x)
    return best


@ray.remote(max_retries=3, scheduling_strategy="SPREAD")
def _block(data, k: int, tau: str, tile: int, b: int, staging: str):
    t0 = time.time()
    _failpoint("block", staging)
    stripes, rows, cols = _clipcov.cross_block(data["image_embedding"], data["text_embedding"], tau, tile, b)
    info = _task_info("cross_block", k, t0)
    info["block"] = b
    return (stripes, rows, cols), info


@ray.remote(max_retries=3, scheduling_strategy="SPREAD")
def _terms(data, k: int, c, si, st, sizes, cfg: dict, tile: int, total_rows: int, staging: str, *blocks):
    t0 = time.time()
    _failpoint("terms", staging)
    cross = None
    infos = []
    if blocks:
        n = len(data["row"])
        cross = _clipcov.cross_reduce(n, tile, [b[0] for b in blocks])
        infos = [b[1] for b in blocks]
    terms = _clipcov.class_terms(
        data["image_embedding"], data["text_embedding"], k, c, si, st, sizes, tau=cfg["tau"],
        tile_rows=tile, cross_sums=cross, cross_sample=str(cfg["cross_sample"]), seed=cfg["seed"],
        total_rows=total_rows, memory_limit_bytes=cfg["memory_limit_bytes"])
    return terms, infos + [_task_info("terms", k, t0)]


@ray.remote(max_retries=3, scheduling_strategy="SPREAD")
def _sequence(data, terms, k: int, refresh: int, cap: int, cfg: dict, tile: int, staging: str):
    t0 = time.time()
    _failpoint("greedy", staging)
    local, scores = _clipcov.class_sequence(
        data["image_embedding"], data["text_embedding"], terms, refresh, cap, tau=cfg["tau"],
        weights=",".join(repr(float(w)) for w in cfg["weights"]), tile_rows=tile,
        refresh_mode=cfg["refresh_mode"])
    rows = data["row"].take(local)
    info = _task_info("greedy", k, t0)
    info["picks"] = len(local)
    return local, rows, scores, info


@ray.remote(max_retries=3)
def _picked(data, terms, local):
    """The picked rows' ids, canonical rows and terms, in sequence order."""
    return data["id"].take(local), data["row"].take(local), terms.take(local)


# ------------------------------------------------------------- the driver


def _clipcov_cause(e: BaseException) -> ClipcovError | None:
    """The ClipcovError a Ray task raised, found in Ray's wrapping."""
    seen = set()
    stack = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, ClipcovError):
            return x
        stack += [getattr(x, "cause", None), x.__cause__, x.__context__]
    return None


def _connect(num_cpus: int | None = None) -> None:
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, log_to_driver=True)


def _row_groups(files) -> list[dict]:
    items, first = [], 0
    for path, _rel, rows in files:
        md = pq.ParquetFile(path).metadata
        in_file = 0
        for g in range(md.num_row_groups):
            n = md.row_group(g).num_rows
            items.append({"item": len(items), "path": path, "group": g, "row_in_file": in_file,
                          "first_row": first + in_file})
            in_file += n
        first += rows
    return items


def _write_json(path: str, value: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def select_from_flags(flags: list[str], *, split_rows: int = 50_000, staging: str | None = None,
                      num_cpus: int | None = None) -> dict:
    """:func:`select` with ``clipcov select``'s flags as a list."""
    started = time.time()
    cfg = json.loads(_clipcov.select_config(flags))  # the CLI's validation and messages
    for key, flag in _UNSUPPORTED.items():
        if cfg.get(key):
            raise ClipcovError(f"{flag} is not supported by the Ray recipe yet; use `clipcov select`")
    if cfg["on_duplicate"] != "error":
        raise ClipcovError("--on-duplicate keep-first is not supported by the Ray recipe yet")
    if isinstance(cfg["cross_sample"], dict):
        raise ClipcovError("--cross-sample auto is not supported by the Ray recipe; give a sample size")
    out = str(cfg["out"])
    timings: list[dict] = []

    def stage(name: str, t0: float, rows: int) -> None:
        s = time.time() - t0
        timings.append({"stage": name, "seconds": s, "rows": rows})
        _log(f"{name} done in {s:.2f} s ({rows} rows)")

    cols = cfg["columns"]
    files, (cols["id"], cols["image"], cols["text"]) = _clipcov.discover(
        cfg["data"], cols["id"], cols["image"], cols["text"])
    c, class_ids, names = _clipcov.read_prompts(cfg["prompts"])
    kk, d = len(c), c.type.list_size
    total_rows = sum(f[2] for f in files)
    tile = cfg["tile_rows"] or _clipcov.plan_tile_rows(cfg["memory_limit_bytes"], total_rows, d, cfg["threads"])
    _connect(num_cpus)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    _log(f"{total_rows} rows in {len(files)} shards, {kk} classes, d = {d}; "
         f"{len(nodes)} Ray node(s), {int(ray.cluster_resources().get('CPU', 0))} CPUs")
    os.makedirs(out, exist_ok=True)
    staging = staging or os.path.join(out, f".ray-staging-{uuid.uuid4().hex[:12]}")
    os.makedirs(staging, exist_ok=True)
    tasks: list[dict] = []
    try:
        return _run(cfg, files, cols, c, kk, d, total_rows, tile, nodes, staging, tasks, timings,
                    stage, split_rows, started, out)
    except Exception as e:
        cause = _clipcov_cause(e)
        if cause is not None and cause is not e:
            # The task's one-line message and exit status, not Ray's traceback.
            err = ClipcovError(str(cause))
            err.exit_code = getattr(cause, "exit_code", 70)
            raise err from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _run(cfg, files, cols, c, kk, d, total_rows, tile, nodes, staging, tasks, timings, stage,
         split_rows, started, out):
    # 1. normalise + class (Ray Data), class-partitioned Parquet.
    t0 = time.time()
    items = _row_groups(files)
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    done = ds.map(_normalise_item, fn_kwargs={"classes": c, "cfg": cfg, "staging": staging},
                  num_cpus=1).take_all()
    errors = sorted((r["item"], json.loads(r["error"])) for r in done if r["error"])
    if errors:
        message, code = errors[0][1]
        err = ClipcovError(message)
        err.exit_code = code
        raise err
    repeated = [r for r in ray.get([_repeated.remote(b, staging) for b in range(_ID_BUCKETS)]) if r]
    if repeated:
        row, first, the_id = min(repeated)
        # The file and row in the file of the later occurrence.
        start = 0
        for path, _rel, n in files:
            if row < start + n:
                raise _clipcov.duplicate_id(path, row - start, cols["id"], str(the_id), first)
            start += n
    sizes = [0] * kk
    bad: list = []
    for r in done:
        for k, n in json.loads(r["counts"]).items():
            sizes[int(k)] += n
        bad += json.loads(r["bad"])
        tasks.append({"task": "normalise", "item": r["item"], "seconds": r["seconds"],
                      "pid": r["pid"], "node": r["node"]})
    used = sum(sizes)
    stage("normalise", t0, total_rows)
    budget_cfg = cfg["budget"]
    budget, warning = _clipcov.budget_rows(used, fraction=budget_cfg.get("fraction"),
                                           count=budget_cfg.get("count"))
    active = [k for k in range(kk) if sizes[k] > 0]
    refresh = _clipcov.refresh_period(cfg["refresh"], budget, len(active))

    # 2. load each class in row order; its sums.
    t0 = time.time()
    loaded = {k: _load.remote(k, staging) for k in active}
    sums = {k: ray.get(loaded[k][1]) for k in active}
    zero = [0.0] * d
    si = pa.FixedSizeListArray.from_arrays(pa.array(
        [x for k in range(kk) for x in (sums[k][0].to_pylist() if k in sums else zero)], pa.float64()), d)
    st = pa.FixedSizeListArray.from_arrays(pa.array(
        [x for k in range(kk) for x in (sums[k][1].to_pylist() if k in sums else zero)], pa.float64()), d)
    tasks += [sums[k][3] for k in active]
    stage("load+sums", t0, used)

    # 3. terms: a large class's tiles over several tasks.
    t0 = time.time()
    numeric_tau = cfg["tau"] != "none" and cfg["cross_sample"] == "exact"
    terms = {}
    split = []
    for k in active:
        data = loaded[k][0]
        blocks = []
        if numeric_tau and sizes[k] > split_rows:
            nb = _clipcov.cross_blocks(sizes[k], tile)
            blocks = [_block.remote(data, k, cfg["tau"], tile, b, staging) for b in range(nb)]
            split.append({"class": k, "rows": sizes[k], "blocks": nb})
        terms[k] = _terms.remote(data, k, c, si, st, sizes, cfg, tile, total_rows, staging, *blocks)
    terms_done = {k: ray.get(terms[k]) for k in active}
    for k in active:
        tasks += terms_done[k][1]
    terms_refs = {k: ray.put(terms_done[k][0]) for k in active}
    stage("terms", t0, used)

    # 4. class greedies, 5. merge on the driver.
    t0 = time.time()
    share = math.ceil(budget / max(1, len(active)))
    cap = {k: min(sizes[k], budget, 2 * share + 2 * refresh) for k in active}
    seq = {k: _sequence.remote(loaded[k][0], terms_refs[k], k, refresh, cap[k], cfg, tile, staging)
           for k in active}
    got = {k: ray.get(seq[k]) for k in active}
    reruns = 0
    while True:
        merged = _clipcov.merge(
            [(got[k][1], got[k][2], len(got[k][0]) < cap[k] or cap[k] >= min(sizes[k], budget))
             for k in active], budget)
        if merged[0] == "done":
            break
        k = active[merged[2]]
        cap[k] = min(sizes[k], budget, 2 * cap[k])
        reruns += 1
        _log(f"class {k}: its sequence is extended to {cap[k]} picks")
        got[k] = ray.get(_sequence.remote(loaded[k][0], terms_refs[k], k, refresh, cap[k], cfg, tile, staging))
    tasks += [got[k][3] for k in active]
    order = merged[1]
    stage("greedy+merge", t0, budget)

    # 6. the subset files, with the CLI's writers.
    t0 = time.time()
    per_class: dict[int, list[int]] = {}
    for s, p in order:
        per_class.setdefault(s, []).append(p)
    fetched = {}
    for s, positions in per_class.items():
        k = active[s]
        local = got[k][0].take(pa.array(positions, pa.uint64()))
        fetched[s] = ray.get(_picked.remote(loaded[k][0], terms_refs[k], local))
    cursor = {s: 0 for s in per_class}
    ids, rows, classes, scores, tparts = [], [], [], [], []
    for s, p in order:
        i = cursor[s]
        cursor[s] += 1
        f_ids, f_rows, f_terms = fetched[s]
        ids.append(f_ids[i].as_py())
        rows.append(f_rows[i].as_py())
        classes.append(active[s])
        scores.append(got[active[s]][2][p].as_py())
        tparts.append([f_terms.column(n)[i].as_py() for n in ("easy", "cross", "label", "between")])
    id_type = next(iter(fetched.values()))[0].type if fetched else pa.string()
    terms_batch = pa.RecordBatch.from_arrays(
        [pa.array([t[j] for t in tparts], pa.float64()) for j in range(4)],
        names=["easy", "cross", "label", "between"])
    files_out = _clipcov.write_subset(out, os.path.join(out, "clipcov"), pa.array(ids, id_type),
                                      pa.array(rows, pa.uint64()), pa.array(classes, pa.int32()),
                                      pa.array(scores, pa.float64()), terms_batch,
                                      tau=cfg["tau"], cross_sample=str(cfg["cross_sample"]),
                                      seed=cfg["seed"])
    stage("emit", t0, len(order))

    task_nodes = sorted({t["node"] for t in tasks})
    manifest = {
        "tool": "clipcov",
        "method": "clipcov",
        "engine": {
            "name": "ray",
            "ray_version": ray.__version__,
            "nodes": len(nodes),
            "nodes_used": len(task_nodes),
            "tasks": len(tasks),
            "tasks_by_kind": {kind: sum(1 for t in tasks if t["task"] == kind)
                              for kind in sorted({t["task"] for t in tasks})},
            "split_classes": split,
            "sequence_reruns": reruns,
        },
        "inputs": [{"path": p, "rows": r} for p, _rel, r in files],
        "parameters": {**cfg, "budget_rows": budget, "refresh_period": {"R": refresh},
                       "tile_rows": tile, "d": d, "split_rows": split_rows},
        "rows": {"read": total_rows, "skipped": len(bad), "used": used, "budget": budget,
                 "selected": len(order), "classes": kk, "classes_nonempty": len(active),
                 "classes_selected": len(per_class)},
        "stages": timings,
        "tasks": tasks,
        "seconds_total": time.time() - started,
        "outputs": [{"path": p, "rows": r, "bytes": b, "sha256": h} for p, r, b, h in files_out],
        "warnings": [warning] if warning else [],
    }
    # The manifests last: they list the files written before them.
    _write_json(os.path.join(out, "clipcov", "manifest.json"), manifest)
    _write_json(os.path.join(out, "manifest.json"), manifest)
    return manifest


def select(data, out, *, prompts, fraction=None, split_rows: int = 50_000, staging=None,
           num_cpus=None, **options) -> dict:
    """Runs ClipCov on Ray; the same subset as ``clipcov.select`` / the CLI.

    Every keyword option is a ``clipcov select`` flag, as for
    :func:`clipcov.select`. ``split_rows``: classes larger than this have
    their ``cross`` tiles split over several tasks. ``staging``: the folder
    for the class-partitioned rows (default ``OUT/.ray-staging-*``; on a
    multi-node cluster a folder every node sees). Returns the manifest.
    """
    flags = select_flags(data=data, prompts=prompts, fraction=fraction, out=out, **options)
    return select_from_flags(flags, split_rows=split_rows, staging=staging, num_cpus=num_cpus)


def main(argv: list[str] | None = None) -> int:
    """``python -m clipcov.ray [--split-rows N] [--staging DIR] <clipcov select flags>``."""
    p = argparse.ArgumentParser(prog="python -m clipcov.ray", add_help=True,
                                description="clipcov select on a Ray cluster ($RAY_ADDRESS or a local one); "
                                            "every other flag is a `clipcov select` flag")
    p.add_argument("--split-rows", type=int, default=50_000)
    p.add_argument("--staging", default=None)
    known, rest = p.parse_known_args(argv)
    try:
        m = select_from_flags(rest, split_rows=known.split_rows, staging=known.staging)
    except ClipcovError as e:
        print(f"clipcov: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 1)
    r = m["rows"]
    print(f"selected {r['selected']} of {r['used']} rows on Ray ({m['engine']['nodes']} nodes, "
          f"{m['engine']['tasks']} tasks) in {m['seconds_total']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
