"""Kubernetes access (inventory, CRDs, server-side apply, status) and the local embedded backend.

The only package that imports the Kubernetes client."""
