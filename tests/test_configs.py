"""Every shipped config, as `snakemake --configfile configs/X.yaml` reads it (merged over config.yaml), passes the
up-front checks, its sweep points included: a changed default cannot silently break a shipped config."""

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from headattr.pipeline.checks import validate_config
from headattr.sweeps.plan import sweep_points

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_passes_the_up_front_checks(path, monkeypatch):
    monkeypatch.chdir(REPO)
    config = copy.deepcopy(yaml.safe_load((REPO / "config.yaml").read_text()))
    update_config(config, yaml.safe_load(path.read_text()))
    validate_config(config, REPO)
    points = sweep_points(config, lambda point: validate_config(point, REPO))
    assert bool(points) == bool(config.get("sweep", {}).get("axes"))
