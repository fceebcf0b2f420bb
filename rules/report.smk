# tokens artifacts of the run (attribution and held-out, per seed), for the report's data section
TOKEN_SETS = [
    {
        "seed": u.seed,
        "role": "attribution",
        "asked": config["data"]["max_samples"],
        "path": path("tokens", u.keys["tokens"], "tokens.npz"),
    }
    for u in {u.seed: u for u in UNITS}.values()
] + [
    {
        "seed": h.seed,
        "role": "held-out",
        "asked": config["validation"]["n_samples"],
        "path": path("tokens", h.keys["tokens"], "tokens.npz"),
    }
    for h in HELDOUT
]


rule report:
    input:
        dumps=[path("ig", u.keys["ig"], "dump.npz") for u in UNITS],
        heads=[path("ig", u.keys["ig"], "heads.csv") for u in UNITS],
        completeness=[path("ig", u.keys["ig"], "completeness.csv") for u in UNITS],
        benchmarks=[
            [
                f"{RESULTS}/benchmarks/attribute/{u.keys['ig']}/{s}.tsv"
                for s in u.shards
            ]
            for u in UNITS
        ],
        manifests=[
            [path("ig", u.keys["ig"], f"shards/{s}.manifest.json") for s in u.shards]
            for u in UNITS
        ],
        unit_diag=[f"{RESULTS}/diagnostics/unit/{k}" for k in DIAG["unit"]],
        seed_diag=[f"{RESULTS}/diagnostics/seeds/{k}" for k in DIAG["seeds"]],
        method_diag=[f"{RESULTS}/diagnostics/methods/{k}" for k in DIAG["methods"]],
        validation=[f"{RESULTS}/validation/{k}/curves.csv" for k in VALIDATION],
        validation_summary=[f"{RESULTS}/validation/{k}/summary.csv" for k in VALIDATION],
        tokens=[ts["path"] for ts in TOKEN_SETS],
        task_validation=(
            [f"{RESULTS}/reports/{{key}}/task_validation.csv"]
            if TASK_PLAN["points"]
            else []
        ),
        task_cost=(
            [f"{RESULTS}/reports/{{key}}/task_eval_cost.csv"]
            if TASK_PLAN["points"]
            else []
        ),
        dispersion=[f"{RESULTS}/dispersion/{k}/heads.csv" for k in DISPERSION],
        sparse_validation=(
            [f"{RESULTS}/reports/{{key}}/sparse_validation.csv"] if SPARSE_PLAN else []
        ),
        sparse_items=(
            [f"{RESULTS}/reports/{{key}}/sparse_items.csv"] if SPARSE_PLAN else []
        ),
        template=f"{workflow.basedir}/report/report.md.j2",
    output:
        report_md=f"{RESULTS}/reports/{{key}}/report.md",
        summary=f"{RESULTS}/reports/{{key}}/summary.json",
        figures=report(
            directory(f"{RESULTS}/reports/{{key}}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    log:
        f"{RESULTS}/logs/report/{{key}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/{{key}}.tsv"
    group:
        "summarise"
    conda:
        "../envs/analysis.yaml"
    params:
        units=[
            {
                "seed": u.seed,
                "method": u.method,
                "key": u.keys["ig"],
                "benchmarks": [
                    f"{RESULTS}/benchmarks/attribute/{u.keys['ig']}/{s}.tsv"
                    for s in u.shards
                ],
                "manifests": [
                    path("ig", u.keys["ig"], f"shards/{s}.manifest.json")
                    for s in u.shards
                ],
            }
            for u in UNITS
        ],
        seed_pairs=[
            {"method": m, "seed_a": a, "seed_b": b}
            for m, a, b, _, _ in DIAG["seeds"].values()
        ],
        method_groups=[{"seed": s} for s, _ in DIAG["methods"].values()],
        validation_seeds=[seed for seed, _, _ in VALIDATION.values()],
        token_sets=TOKEN_SETS,
        dispersion_seeds=[seed for seed, _ in DISPERSION.values()],
        config=config,
    script:
        "../scripts/report.py"


onsuccess:
    run_view()
