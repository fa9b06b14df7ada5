"""The edge agent: download with resume, verify, A/B install, health check, serving, telemetry queue."""
