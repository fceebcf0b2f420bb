"""Rule sample_data: every record of the source in the seeded draw order (bad ones flagged or an error)."""

from headattr.pipeline.workflow import log_to, write_manifest

started = log_to(snakemake.log[0])  # noqa: F821

from headattr.pipeline import stages  # noqa: E402

sm = snakemake  # noqa: F821
params = sm.params.slice
info = stages.sample_data(
    params["source"],
    params["fields"],
    params["max_samples"],
    params["stratify"],
    params["data_seed"],
    sm.output.records,
    on_bad_record=params["on_bad_record"],
    split=params["split"],
)
print(
    f"drew {info['n_records']} records from {params['source']} ({info['n_usable']} usable, skipped "
    f"{info['skipped']}; categories {info['categories']})"
)
write_manifest(sm.output.manifest, params, sm.input, started, {"result": info})
