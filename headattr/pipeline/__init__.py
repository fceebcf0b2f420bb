"""The workflow's stages from config to aggregated dumps: config checks, artifact keys, up-front input checks,
shards, dumps, manifests, attribution runs, aggregation and the users' file formats.

Layer 5: imports methods, engine and the layers below; never analysis, evaluation, report, sweeps or cli.
"""
