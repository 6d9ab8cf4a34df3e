"""Analysis of moco3 run folders: tables against the paper, instability figures, a report.

Reads run folders only (``<runs_root>/<ablation>/<run_id>/``: config.yaml, status.json,
metrics.jsonl, summary.json) and never imports torch or moco3's job code (imported as
``moco3.analysis``, it needs only the light package root), so a report can be rebuilt
anywhere from copied logs. ``python analysis/report.py`` builds everything.

    rundata      read one run folder tolerantly      summarize  summary numbers from metrics
    cache        parquet cache of parsed runs        collect    all runs -> DataFrames
    reference    the paper's numbers as data         tables     per-ablation tables
    figuredata   what each figure shows              plots      drawing (seaborn, Agg)
    study        a study's declared findings         stats      tests, Holm, power (scipy)
    verdicts     a verdict per finding               report     the report command

The run-folder contract (file names, states, row kinds, the spike and dip rules) is the
``moco3.runfolder`` package, which the training job and the launcher import too.
"""
