"""Shared fixtures: the clipcov command line (the reference every binding is
checked against) and small synthetic datasets made by `clipcov synth`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def cli_binary() -> str:
    """The command line: $CLIPCOV_BIN, else target/release/clipcov under
    $CARGO_TARGET_DIR or the repository, else `clipcov` on PATH."""
    if os.environ.get("CLIPCOV_BIN"):
        return os.environ["CLIPCOV_BIN"]
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    candidate = target / "release" / "clipcov"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("clipcov")
    if not found:
        pytest.fail("no clipcov binary: build it (cargo build --release) or set CLIPCOV_BIN")
    return found


@pytest.fixture(scope="session")
def cli() -> str:
    return cli_binary()


def run_cli(cli: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([cli, *args], capture_output=True, text=True)


def synth(cli: str, out: Path, rows: int, classes: int, dim: int, shards: int = 2,
          f16: bool = False, seed: int = 0, zipf: float = 0.8) -> Path:
    args = ["synth", "--rows", str(rows), "--classes", str(classes), "--dim", str(dim),
            "--shards", str(shards), "--seed", str(seed), "--zipf", str(zipf),
            "--eval-rows", "10", "--out", str(out)]
    if f16:
        args.append("--f16")
    r = run_cli(cli, *args)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="session")
def small(cli, tmp_path_factory) -> Path:
    """2,000 rows, 8 classes, d = 16, float32, two shards."""
    return synth(cli, tmp_path_factory.mktemp("small"), 2000, 8, 16)


@pytest.fixture(scope="session")
def small_f16(cli, tmp_path_factory) -> Path:
    """As `small`, stored as float16."""
    return synth(cli, tmp_path_factory.mktemp("small16"), 2000, 8, 16, f16=True, seed=3)
