"""The pipeline's stages, one module each, in order: train, evaluate, explain, probe, report.
Each takes a :class:`dermcam.run.Run`, its settings and its :class:`dermcam.audit_set.AuditSet`,
and records itself in the manifest; no stage imports another."""
