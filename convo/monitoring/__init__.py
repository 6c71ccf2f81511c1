"""Monitoring: per-operation timings, the ops stats, Prometheus metrics and alerts
(docs/operations.md). ``timing_record`` and ``timed`` are the entry points the rest of convo uses."""
