"""The run-folder contract: the only thing the three layers share.

    <runs_root>/<ablation>/<run_id>/        run_id e.g. patch_embed=frozen,lr=1.5e-4/seed=0
      config.yaml      the fully resolved run config, written by the launcher, read by the job
      status.json      state, phase, step, total_steps, precision, job_id, host, error, ...
      metrics.jsonl    one JSON row per line; every step's rows exactly once, in order
      summary.json     final numbers (knn_top1, linear_top1, instability counts, ...)
      env.json         one provenance record per (re)start of the job, appended
      checkpoints/     last.pt (atomic), epoch_NNNN.pt milestones, probe_last.pt
      logs/            the job's stdout/stderr
      .job.lock        flock held by the job while it runs: one writer at a time
      tensorboard/     (train.loggers only) the rows as TensorBoard events; probe/: the probe's
      csv/             (train.loggers only) <kind>.csv: the rows of each kind
      wandb_id         (train.loggers only) the W&B run every restart continues; wandb/: W&B's
    <runs_root>/<ablation>/manifest.jsonl   one line per run: factors, seed, hashes, job ids
    <runs_root>/<ablation>/study.json       the declared findings and the paper-scale cost

`moco3` (the job) writes run folders, `moco3.experiments` (the launcher) creates them and
reads their state, `moco3.analysis` (the report) reads them; this package is
`moco3.runfolder`. Each imports this package and none of the others against the flow:
analysis imports neither the job's code nor experiments; the job imports neither
experiments nor analysis. This package imports only the standard library (and the package
root moco3/__init__.py, which does too), so a report can be rebuilt anywhere from copied
logs.

    layout       file and folder names
    states       run states, their groupings (finished, trained, ended) and display order
    fields       status.json and summary.json keys, gradient groups, the first-layer rule
    rows         row kinds, their keys, which rows a resume recomputes, JSON encoding
    atomic       whole-file writes that a crash or a full disk can never leave half-done
    joblock      the run folder's single-writer lock, and who holds it
    instability  the one definition of a gradient spike and of a kNN dip
    study        study.json: the findings a study declares, checked, and their cost
    cli          the command-line conventions: the runs root, key=value pairs, the name
    negatives    how many negatives each query sees (the real K of a run)
"""
