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
