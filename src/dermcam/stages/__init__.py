"""The pipeline's stages, one module and one entry each, in the order they run:

    train.py      train(TrainConfig)                     -> models/<name>/model.pt, manifest
    evaluate.py   run_evaluate(run, EvaluateConfig, audit) -> predictions.csv, metrics.json
    explain.py    run_explain(run, ExplainConfig, audit)   -> attention.csv, its summary
    probe.py      run_probe(run, ProbeConfig, audit)       -> probe.csv, probe_summary.json
    report.py     run_report(run)                          -> report.html (dermcam.report)

Each takes a :class:`dermcam.run.Run` (or a run folder, which it opens as one:
:meth:`dermcam.run.Run.of`) with paths by name, config, data set, decode cache and
checkpoints; its settings (:mod:`dermcam.config`); the images it audits, an
:class:`dermcam.audit_set.AuditSet` opened once by the caller (the run's test split by
default, or another set's with ``--data``: data set, samples, decode cache, output paths,
manifest key); and records itself in the manifest with
``with run.stage(name):`` (running, then complete or failed); training writes the manifest through
``Run.create`` / ``record_model`` / ``set_stage``. The pure pieces they
compose live beside this package: metrics and tests (evaluation, stats, calibration,
subgroups), CAMs and their scores (attribution, localisation, sanity, leakage),
checkpoints and inference, data layouts (data/). No stage imports another: what
two stages share lives below them (audit_set, config, pictures). external.py holds no
stage, only what the report reads of the external sets a run records.
"""
