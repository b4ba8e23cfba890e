"""`clipcov.select` runs the command line's job: byte-identical subsets, the
same one-line errors."""

from __future__ import annotations

import pytest

import clipcov
from conftest import run_cli


def assert_same_subset(a, b):
    for name in ("subset.parquet", "subset.csv"):
        x = (a / "clipcov" / name).read_bytes()
        y = (b / "clipcov" / name).read_bytes()
        assert x == y, f"{name} differs"


@pytest.mark.parametrize("data", ["small", "small_f16"])
@pytest.mark.parametrize("tau", ["0", "none"])
def test_select_equals_cli(cli, request, tmp_path, data, tau):
    d = request.getfixturevalue(data)
    flags = ["--data", str(d / "data"), "--prompts", str(d / "prompts.parquet"),
             "--fraction", "0.1", "--tau", tau, "--tile-rows", "64"]
    r = run_cli(cli, "select", *flags, "--out", str(tmp_path / "cli"), "--quiet")
    assert r.returncode == 0, r.stderr
    m = clipcov.select(data=d / "data", prompts=d / "prompts.parquet", fraction=0.1,
                       out=tmp_path / "py", tau=tau, tile_rows=64)
    assert m["rows"]["selected"] == 200
    assert_same_subset(tmp_path / "cli", tmp_path / "py")


@pytest.mark.parametrize(
    "options",
    [
        {"prompts": "MISSING"},  # an unreadable file: I/O, 74
        {"fraction": 0.1, "tau": "x"},  # a bad value: usage, 2
        {"fraction": 0.1, "weights": "1,2"},
        {"fraction": 0.1, "no_such_flag": 3},  # clap rejects it
        {"fraction": 0.1, "prompts": "DATA"},  # a shard as prompts: bad data, 65
    ],
)
def test_bad_input_same_one_line_error(cli, small, tmp_path, options):
    options = dict(options)
    options.setdefault("fraction", 0.1)
    if options.get("prompts") == "MISSING":
        options["prompts"] = tmp_path / "missing.parquet"
    elif options.get("prompts") == "DATA":
        options["prompts"] = sorted((small / "data").glob("*.parquet"))[0]
    else:
        options["prompts"] = small / "prompts.parquet"
    flags = clipcov.select_flags(data=small / "data", out=tmp_path / "cli", **options)
    r = run_cli(cli, "select", *flags, "--quiet")
    assert r.returncode != 0
    with pytest.raises(clipcov.ClipcovError) as e:
        clipcov.select(data=small / "data", out=tmp_path / "cli", **options)
    line = r.stderr.strip().splitlines()[0]
    # clap's own errors print "error: ..." and more lines; ours "clipcov: ...".
    assert line in (f"clipcov: {e.value}", f"error: {e.value}")
    assert e.value.exit_code == r.returncode
    assert "\n" not in str(e.value)


def test_a_nightly_select_appends_new_shards(cli, tmp_path):
    """The same `out` on a pool that gained a shard: only it is staged, and
    the subset is the CLI's full run on the final pool."""
    from conftest import synth

    d = synth(cli, tmp_path / "ds", 3000, 6, 16, shards=3)
    shards = sorted((d / "data").glob("*.parquet"))
    aside = tmp_path / "aside.parquet"
    shards[-1].rename(aside)
    kw = dict(data=d / "data", prompts=d / "prompts.parquet", fraction=0.1, out=tmp_path / "py")
    assert clipcov.select(**kw)["incremental"]["store"] == "staged"
    aside.rename(shards[-1])
    m = clipcov.select(**kw)
    assert (m["incremental"]["store"], m["incremental"]["score"]) == ("appended", "incremental")
    assert m["incremental"]["rows_added"] == 1000
    flags = ["--data", str(d / "data"), "--prompts", str(d / "prompts.parquet"), "--fraction", "0.1"]
    r = run_cli(cli, "select", *flags, "--out", str(tmp_path / "cli"), "--quiet")
    assert r.returncode == 0, r.stderr
    ids = [line.split(",")[:2] for line in (tmp_path / "py" / "clipcov" / "subset.csv").read_text().splitlines()]
    ref = [line.split(",")[:2] for line in (tmp_path / "cli" / "clipcov" / "subset.csv").read_text().splitlines()]
    assert ids == ref
