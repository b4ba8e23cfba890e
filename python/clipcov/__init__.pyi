"""Type stubs of clipcov (see the docstrings in clipcov/__init__.py)."""

import os
from typing import Any, Literal, Sequence, Union

import pyarrow as pa

_Path = Union[str, os.PathLike]
_Rows = Union[pa.FixedSizeListArray, pa.ChunkedArray]

class ClipcovError(Exception):
    exit_code: int

def select_flags(**options: Any) -> list[str]: ...
def select(
    data: _Path,
    out: _Path,
    *,
    prompts: _Path | None = ...,
    fraction: float | None = ...,
    quiet: bool = ...,
    log_format: str = ...,
    **options: Any,
) -> dict: ...
def read_prompts(path: _Path) -> tuple[pa.FixedSizeListArray, list[int], list[str]]: ...
def normalise(
    batch: pa.RecordBatch | pa.Table,
    classes: _Rows,
    *,
    path: _Path = ...,
    first_row_in_file: int = ...,
    prompts_path: _Path | None = ...,
    id_column: str = ...,
    image_column: str = ...,
    text_column: str = ...,
    assign_text: bool = ...,
    on_bad_row: Literal["error", "skip"] = ...,
) -> tuple[pa.RecordBatch, list[tuple[int, str]]]: ...
def class_sums(image: _Rows, text: _Rows) -> tuple[pa.DoubleArray, pa.DoubleArray]: ...
def class_terms(
    image: _Rows,
    text: _Rows,
    k: int,
    class_embeddings: _Rows,
    image_sums: pa.FixedSizeListArray,
    text_sums: pa.FixedSizeListArray,
    sizes: Sequence[int],
    *,
    tau: str | float = ...,
    tile_rows: int = ...,
    cross_sums: pa.DoubleArray | None = ...,
    cross_sample: str | int = ...,
    seed: int = ...,
    total_rows: int = ...,
    memory_limit_bytes: int = ...,
) -> pa.RecordBatch: ...
def cross_blocks(n: int, tile_rows: int) -> int: ...
def cross_block(
    image: _Rows, text: _Rows, tau: str | float, tile_rows: int, block: int
) -> tuple[list[int], pa.DoubleArray, pa.DoubleArray]: ...
def cross_reduce(
    n: int, tile_rows: int, blocks: Sequence[tuple[Sequence[int], pa.DoubleArray, pa.DoubleArray]]
) -> pa.DoubleArray: ...
def class_sequence(
    image: _Rows,
    text: _Rows,
    terms: pa.RecordBatch,
    refresh: int,
    max_picks: int,
    *,
    tau: str | float = ...,
    weights: str | Sequence[float] = ...,
    tile_rows: int = ...,
    refresh_mode: Literal["lazy", "eager"] = ...,
) -> tuple[pa.UInt64Array, pa.DoubleArray]: ...
def merge(
    sequences: Sequence[tuple[Any, Any, bool]], budget: int
) -> tuple[Literal["done"], list[tuple[int, int]]] | tuple[Literal["more"], int]: ...
def write_subset(
    out: _Path,
    ids: pa.Array,
    rows: Sequence[int] | pa.Array,
    classes: Sequence[int] | pa.Array,
    scores: Sequence[float] | pa.Array,
    terms: pa.RecordBatch,
    tau: str = ...,
    cross_sample: str | int = ...,
    seed: int = ...,
) -> list[tuple[str, int, int, str]]: ...
