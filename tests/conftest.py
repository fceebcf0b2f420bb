import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
# no test reaches a model hub: a config naming a hub id is judged offline (the check's network probe is skipped)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Run the SLURM tests last: once they have installed the SLURM client tools and stopped the controller,
    every snakemake start pays a 10 s `scontrol show config` timeout (the SLURM plugin probes the cluster when it
    is loaded), so the other workflow tests run first."""
    items.sort(key=lambda item: item.get_closest_marker("slurm") is not None)
