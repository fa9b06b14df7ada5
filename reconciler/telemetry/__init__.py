"""Telemetry summaries, fleet aggregation, drift (PSI, KL) and Prometheus metrics."""
