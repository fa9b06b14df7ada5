"""Artifact builds: optimization passes, conversion, benchmarks and gates, packaging, content-addressed store."""
