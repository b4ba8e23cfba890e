"""clipcov: ClipCov subset selection for CLIP pretraining data.

The functions here run the same Rust code as the ``clipcov`` command line.
:func:`select` runs the whole ``clipcov select`` job; the stage functions
(:func:`normalise`, :func:`class_sums`, :func:`class_terms`, ...) take and
return Arrow data (zero-copy through the Arrow C Data Interface) so that a
distributed engine can run the stages itself (see :mod:`clipcov.ray`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from . import _clipcov
from ._clipcov import ClipcovError

__all__ = ["ClipcovError", "select", "select_flags"]


def _flag_value(name: str, value: Any) -> list[str]:
    flag = "--" + name.rstrip("_").replace("_", "-")
    if value is None or value is False:
        return []
    if value is True:
        return [flag]
    if isinstance(value, (list, tuple)):
        return [flag, ",".join(str(v) for v in value)]
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return [flag, str(value)]


def select_flags(**options: Any) -> list[str]:
    """The ``clipcov select`` flags for keyword options: ``fraction=0.1``
    is ``--fraction 0.1``, ``tau="none"`` is ``--tau none``, ``True`` is a
    bare flag, a list is comma-separated, ``where_`` (or ``**{"where": ...}``)
    is ``--where``."""
    args: list[str] = []
    for name, value in options.items():
        args += _flag_value(name, value)
    return args


def select(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    prompts: str | os.PathLike | None = None,
    fraction: float | None = None,
    quiet: bool = True,
    log_format: str = "text",
    **options: Any,
) -> dict:
    """Runs ``clipcov select`` and returns its manifest (``OUT/manifest.json``).

    Every keyword option is a ``clipcov select`` flag (``budget=1000``,
    ``tau="none"``, ``clusters=100``, ``tile_rows=256``, ``threads=4``,
    ...). Writes ``OUT/clipcov/subset.parquet``, ``subset.csv`` and the
    manifests exactly as the command line does. Bad input raises
    :class:`ClipcovError` with the command line's one-line message and its
    exit status in ``exit_code``.
    """
    args = select_flags(data=data, prompts=prompts, fraction=fraction, out=out, **options)
    return json.loads(_clipcov.select(args, quiet=quiet, log_format=log_format))


# ----------------------------------------------------------------- stages
#
# Each function below calls the Rust code the command line runs for that
# stage. Embeddings are FixedSizeList<float32> arrays of unit rows (what
# `normalise` returns); chunked arrays are combined first.

import pyarrow as pa  # noqa: E402

__all__ += [
    "read_prompts", "normalise", "class_sums", "class_terms", "cross_blocks",
    "cross_block", "cross_reduce", "class_sequence", "merge", "write_subset",
]


def _array(a):
    if isinstance(a, pa.ChunkedArray):
        return a.combine_chunks()
    return a


def read_prompts(path):
    """The class prompts file: ``(c, class_ids, names)`` with ``c`` the unit
    class embeddings as a FixedSizeList<float32> array ``[K, d]`` (templates
    of one class averaged and renormalised, as the CLI does)."""
    return _clipcov.read_prompts(os.fspath(path))


def normalise(batch, classes, *, path="<batch>", first_row_in_file=0, prompts_path=None,
              id_column="id", image_column="image_embedding", text_column="text_embedding",
              assign_text=False, on_bad_row="error"):
    """Validates, L2-normalises and classes one RecordBatch with ingest's code.

    Returns ``(rows, bad)``: ``rows`` a RecordBatch ``index`` (the row in
    ``batch``), ``class`` (``argmax_k <u_i, c_k>``, ties to the smallest k),
    ``image_embedding``, ``text_embedding`` (unit float32 rows, as the staged
    store holds them); ``bad`` the ``(index, reason)`` of rows skipped with
    ``on_bad_row="skip"``. A bad row raises :class:`ClipcovError` with the
    CLI's message naming ``path`` and the row ``first_row_in_file + index``.
    """
    if isinstance(batch, pa.Table):
        batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else \
            pa.RecordBatch.from_pylist([], schema=batch.schema)
    return _clipcov.normalise(
        batch, _array(classes), path=os.fspath(path), first_row_in_file=first_row_in_file,
        prompts_path=None if prompts_path is None else os.fspath(prompts_path),
        id_column=id_column, image_column=image_column, text_column=text_column,
        assign_text=assign_text, on_bad_row=on_bad_row)


def class_sums(image, text):
    """``(sum_j u_j, sum_j v_j)`` over one class's rows in row order, as two
    float64 arrays of length d (the CLI's class sums). Sums of parts (batches)
    add up to the whole, equal to the CLI's to rounding; one call over the
    class in row order is equal to the bit."""
    return _clipcov.class_sums(_array(image), _array(text))


def class_terms(image, text, k, class_embeddings, image_sums, text_sums, sizes, *,
                tau="0", tile_rows=256, cross_sums=None, cross_sample="exact", seed=0,
                total_rows=0, memory_limit_bytes=4 << 30):
    """The four terms (spec section 2) of class ``k``'s rows, as a RecordBatch
    ``easy``, ``cross``, ``label``, ``between``.

    ``class_embeddings``: every ``c_k`` ``[K, d]``; ``image_sums``,
    ``text_sums``: every class's sums as FixedSizeList<float64> ``[K, d]``;
    ``sizes``: every class's rows. ``cross_sums``: the class's
    ``n_k * cross_i`` from :func:`cross_reduce` when the tiles ran elsewhere.
    """
    return _clipcov.class_terms(
        _array(image), _array(text), k, _array(class_embeddings), _array(image_sums),
        _array(text_sums), [int(s) for s in sizes], tau=str(tau), tile_rows=tile_rows,
        cross_sums=None if cross_sums is None else _array(cross_sums),
        cross_sample=str(cross_sample), seed=seed, total_rows=total_rows,
        memory_limit_bytes=memory_limit_bytes)


def cross_blocks(n, tile_rows):
    """How many tile blocks (tasks) the tiled ``cross`` of a class of ``n`` rows has."""
    return _clipcov.cross_blocks(n, tile_rows)


def cross_block(image, text, tau, tile_rows, block):
    """Block ``block`` of a class's tiled ``cross`` sum: ``(stripes, row sums
    of those stripes, column sums over the class)``."""
    return _clipcov.cross_block(_array(image), _array(text), str(tau), tile_rows, block)


def cross_reduce(n, tile_rows, blocks):
    """The class's ``n_k * cross_i`` (float64 ``[n]``) from all its blocks,
    reduced in block order exactly as the CLI does."""
    return _clipcov.cross_reduce(n, tile_rows, [(list(s), _array(r), _array(c)) for s, r, c in blocks])


def class_sequence(image, text, terms, refresh, max_picks, *, tau="0", weights="1,2,0.5,1",
                   tile_rows=256, refresh_mode="lazy"):
    """One class's greedy (spec section 3): its first ``max_picks`` picks as
    ``(local index, score at the pick)`` arrays. ``refresh`` is the resolved
    period ``R``; ``weights`` ``"w_cross,w_easy,w_label,w_between"``."""
    if isinstance(weights, (list, tuple)):
        weights = ",".join(str(w) for w in weights)
    return _clipcov.class_sequence(_array(image), _array(text), terms, refresh, max_picks,
                                   tau=str(tau), weights=weights, tile_rows=tile_rows,
                                   refresh_mode=refresh_mode)


def merge(sequences, budget):
    """The heap merge of per-class pick sequences into the ranked subset.

    ``sequences``: ``(rows, scores, complete)`` per class, ``rows`` the
    canonical row index of each pick (uint64), ``complete`` False when the
    class may have more picks. Returns ``("done", [(sequence, position), ...])``
    in rank order, or ``("more", s)`` when sequence ``s`` ran out too early.
    """
    seqs = [(pa.array(r, pa.uint64()), pa.array(s, pa.float64()), bool(c)) for r, s, c in sequences]
    kind, picks, more = _clipcov.merge(seqs, budget)
    return (kind, picks) if kind == "done" else (kind, more)


def write_subset(out, ids, rows, classes, scores, terms, tau="0", cross_sample="exact", seed=0):
    """Writes ``OUT/clipcov/subset.parquet`` and ``subset.csv`` (and
    ``datacomp_uids.npy`` for DataComp uids) with the CLI's writers, in rank
    order, each atomically; ``subset.parquet`` names the cross estimator of
    ``tau``, ``cross_sample`` and ``seed`` as the CLI's does. Returns the
    files as ``(path, rows, bytes, sha256)``."""
    out = os.fspath(out)
    return _clipcov.write_subset(
        out, os.path.join(out, "clipcov"), _array(ids), pa.array(rows, pa.uint64()),
        pa.array(classes, pa.int32()), pa.array(scores, pa.float64()), terms,
        tau=str(tau), cross_sample=str(cross_sample), seed=int(seed))
