"""Federated learning rounds, secure aggregation, new model versions as Git changes."""
