"""Telemetry summaries: merged per device and version (:mod:`.summaries`), added up across the fleet, drift (PSI,
KL) and Prometheus metrics."""
