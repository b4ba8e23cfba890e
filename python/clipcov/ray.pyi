import os
from typing import Any, Union

_Path = Union[str, os.PathLike]

def select(
    data: _Path,
    out: _Path,
    *,
    prompts: _Path,
    fraction: float | None = ...,
    split_rows: int = ...,
    staging: str | None = ...,
    num_cpus: int | None = ...,
    **options: Any,
) -> dict: ...
def select_from_flags(
    flags: list[str], *, split_rows: int = ..., staging: str | None = ..., num_cpus: int | None = ...
) -> dict: ...
def main(argv: list[str] | None = ...) -> int: ...
