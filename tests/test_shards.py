"""Sharded runs gather to the unsharded dump (its own file so that it runs beside the resume test)."""

from helpers import NO_VALIDATION, assert_same_dumps, dumps_of, write_tiny_project
from test_workflow import snakemake


def test_sharded_run_gathers_to_the_unsharded_dump(tmp_path):
    plain, sharded = tmp_path / "plain", tmp_path / "sharded"
    for root, shard in ((plain, {}), (sharded, {"shard": {"samples": 3, "layers": 2}})):
        root.mkdir()
        write_tiny_project(
            root, methods=("per_layer", "joint"), seeds=(5,), n_samples=5, extra={**NO_VALIDATION, **shard}
        )
        result = snakemake(root, "--cores", "2", "--until", "aggregate")
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    shards = sorted(p.name for p in (sharded / "results" / "ig").glob("per_layer-*/shards/*.npz"))
    assert shards == ["s0-3_l0-2.npz", "s0-3_l2-3.npz", "s3-5_l0-2.npz", "s3-5_l2-3.npz"]
    assert_same_dumps(dumps_of(plain), dumps_of(sharded))
