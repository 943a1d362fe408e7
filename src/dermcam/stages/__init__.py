"""The pipeline's stages, one module and one entry each, in order: train, evaluate,
explain, probe, report.

Each takes a :class:`dermcam.run.Run` (or its folder), its settings (:mod:`dermcam.config`)
and the images it audits (:class:`dermcam.audit_set.AuditSet`), and records itself in the
manifest. No stage imports another; what two share lives below them."""
