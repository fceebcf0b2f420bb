"""Rule sample_data: draw the seeded subset of records (or the held-out records after it)."""

from headattr.workflow import log_to, write_manifest

started = log_to(snakemake.log[0])  # noqa: F821

from headattr import stages  # noqa: E402

sm = snakemake  # noqa: F821
params = sm.params.slice
info = stages.sample_data(
    params["source"],
    params["fields"],
    params["max_samples"],
    params["stratify"],
    params["data_seed"],
    sm.output.records,
    heldout=sm.params.heldout,
)
print(f"sampled {info['n_records']} records from {params['source']} (categories {info['categories']})")
write_manifest(sm.output.manifest, params, sm.input, started, {"result": info})
