"""`clipcov.ray.select` on a real Ray cluster ($RAY_ADDRESS, as `.ci/run`
starts one: a head and a second node, one CPU each; else a local one):
byte-identical subsets to the command line's."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

ray = pytest.importorskip("ray")

import clipcov  # noqa: E402
import clipcov.ray as cray  # noqa: E402
from conftest import run_cli, synth  # noqa: E402
from test_select import assert_same_subset  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def cluster():
    cray._connect(num_cpus=2)
    yield
    ray.shutdown()


def cli_select(cli, d, out, *flags):
    r = run_cli(cli, "select", "--data", str(d / "data"), "--prompts", str(d / "prompts.parquet"),
                *flags, "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.parametrize("data", ["small", "small_f16"])
@pytest.mark.parametrize("tau", ["0", "none"])
def test_ray_equals_cli(cli, request, tmp_path, data, tau):
    d = request.getfixturevalue(data)
    cli_select(cli, d, tmp_path / "cli", "--fraction", "0.1", "--tau", tau, "--tile-rows", "64")
    m = cray.select(data=d / "data", prompts=d / "prompts.parquet", fraction=0.1,
                    out=tmp_path / "ray", tau=tau, tile_rows=64)
    assert_same_subset(tmp_path / "cli", tmp_path / "ray")
    assert m["engine"]["name"] == "ray" and m["engine"]["tasks"] > 0
    assert m["rows"]["selected"] == 200
    assert not [p for p in os.listdir(tmp_path / "ray") if p.startswith(".ray-staging")]


@pytest.fixture(scope="module")
def one_big_class(cli, tmp_path_factory):
    """A class large enough to be split: 6,000 rows, Zipf classes (the
    largest holds thousands of rows)."""
    return synth(cli, tmp_path_factory.mktemp("big"), 6000, 3, 16, zipf=2.0, seed=7)


def test_ray_split_class_equals_cli(cli, one_big_class, tmp_path):
    d = one_big_class
    cli_select(cli, d, tmp_path / "cli", "--fraction", "0.05", "--tile-rows", "100")
    m = cray.select(data=d / "data", prompts=d / "prompts.parquet", fraction=0.05,
                    out=tmp_path / "ray", tile_rows=100, split_rows=1000)
    assert m["engine"]["split_classes"], "no class was split"
    nodes = int(os.environ.get("CLIPCOV_RAY_NODES", "1"))
    assert m["engine"]["nodes"] == nodes
    assert m["engine"]["nodes_used"] == nodes, "every node ran tasks"
    assert m["engine"]["tasks_by_kind"]["cross_block"] >= 8
    assert_same_subset(tmp_path / "cli", tmp_path / "ray")


@pytest.mark.parametrize("stage", ["terms", "block", "greedy"])
def test_a_killed_worker_is_retried_and_the_result_unchanged(cli, one_big_class, tmp_path, stage, monkeypatch):
    d = one_big_class
    cli_select(cli, d, tmp_path / "cli", "--fraction", "0.05", "--tile-rows", "100")
    monkeypatch.setenv("CLIPCOV_RAY_FAILPOINT", stage)
    # The workers read the failpoint from their environment.
    ray.shutdown()
    ray.init(address=os.environ.get("RAY_ADDRESS"), num_cpus=None if os.environ.get("RAY_ADDRESS") else 2,
             runtime_env={"env_vars": {"CLIPCOV_RAY_FAILPOINT": stage}})
    try:
        cray.select(data=d / "data", prompts=d / "prompts.parquet", fraction=0.05,
                    out=tmp_path / "ray", tile_rows=100, split_rows=1000,
                    staging=str(tmp_path / "staging"))
    finally:
        ray.shutdown()
        cray._connect(num_cpus=2)
    assert_same_subset(tmp_path / "cli", tmp_path / "ray")
    assert not (tmp_path / "staging").exists()


def test_ray_bad_input_same_error(cli, small, tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "data").mkdir()
    shards = sorted((small / "data").glob("*.parquet"))
    for s in shards:
        t = pq.read_table(s)
        if s == shards[-1]:
            img = t["image_embedding"].combine_chunks()
            vals = np.asarray(img.values.to_numpy()).copy()
            d = img.type.list_size
            vals[5 * d + 3] = np.nan
            img = pa.FixedSizeListArray.from_arrays(pa.array(vals, img.type.value_type), d)
            t = t.set_column(t.schema.get_field_index("image_embedding"), "image_embedding", img)
        pq.write_table(t, tmp_path / "data" / s.name)
    d = tmp_path
    (d / "prompts.parquet").write_bytes((small / "prompts.parquet").read_bytes())
    r = run_cli(cli, "select", "--data", str(d / "data"), "--prompts", str(d / "prompts.parquet"),
                "--fraction", "0.1", "--out", str(d / "cli"), "--quiet")
    assert r.returncode == 65
    with pytest.raises(clipcov.ClipcovError) as e:
        cray.select(data=d / "data", prompts=d / "prompts.parquet", fraction=0.1, out=d / "ray")
    assert r.stderr.strip() == f"clipcov: {e.value}"
    assert e.value.exit_code == 65
    assert not [p for p in os.listdir(d / "ray") if p.startswith(".ray-staging")]
    # A usage error is the CLI's own message, before anything runs.
    with pytest.raises(clipcov.ClipcovError) as u:
        cray.select(data=d / "data", prompts=d / "prompts.parquet", fraction=0.1, out=d / "ray", tau="x")
    assert str(u.value) == "invalid --tau 'x': expected a number or 'none'"


def test_ray_repeated_id_same_error(cli, small, tmp_path):
    import pyarrow.parquet as pq

    (tmp_path / "data").mkdir()
    shards = sorted((small / "data").glob("*.parquet"))
    first_id = pq.read_table(shards[0])["id"][7].as_py()
    for s in shards:
        t = pq.read_table(s)
        if s == shards[-1]:
            ids = t["id"].to_pylist()
            ids[11] = first_id
            t = t.set_column(t.schema.get_field_index("id"), "id", pa.array(ids, t.schema.field("id").type))
        pq.write_table(t, tmp_path / "data" / s.name)
    d = tmp_path
    (d / "prompts.parquet").write_bytes((small / "prompts.parquet").read_bytes())
    r = run_cli(cli, "select", "--data", str(d / "data"), "--prompts", str(d / "prompts.parquet"),
                "--fraction", "0.1", "--out", str(d / "cli"), "--quiet")
    assert r.returncode == 65 and "duplicate id" in r.stderr
    with pytest.raises(clipcov.ClipcovError) as e:
        cray.select(data=d / "data", prompts=d / "prompts.parquet", fraction=0.1, out=d / "ray")
    assert r.stderr.strip() == f"clipcov: {e.value}"
    assert e.value.exit_code == 65
