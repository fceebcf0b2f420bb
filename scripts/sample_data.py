"""Rule sample_data: draw the seeded subset of records."""

from headattr.workflow import log_to, write_manifest

started = log_to(snakemake.log[0])  # noqa: F821

from headattr import stages  # noqa: E402

params = snakemake.params.slice  # noqa: F821
info = stages.sample_data(
    params["source"],
    params["fields"],
    params["max_samples"],
    params["stratify"],
    params["data_seed"],
    snakemake.output.records,  # noqa: F821
)
print(f"sampled {info['n_records']} records from {params['source']} (categories {info['categories']})")
write_manifest(snakemake.output.manifest, params, snakemake.input, started, {"result": info})  # noqa: F821
