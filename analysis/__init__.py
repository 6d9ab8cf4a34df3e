"""Analysis of moco3 run folders: tables against the paper, instability figures, a report.

Reads run folders only (``<runs_root>/<ablation>/<run_id>/``: config.yaml, status.json,
metrics.jsonl, summary.json) and never imports torch or moco3, so a report can be rebuilt
anywhere from copied logs. ``python analysis/report.py`` builds everything.

    instability  the one definition of gradient spikes and kNN dips (stdlib only; the training
                 job imports it too)
    runfolder    read one run folder tolerantly      summarize  summary numbers from metrics
    cache        parquet cache of parsed runs        collect    all runs -> DataFrames
    reference    the paper's numbers as data         tables     per-ablation tables
    figuredata   what each figure shows              plots      drawing (seaborn, Agg)
    report       the report command

This file stays empty of imports: ``moco3.monitor`` imports ``analysis.instability`` in the
training job, which must not pay for pandas.
"""
