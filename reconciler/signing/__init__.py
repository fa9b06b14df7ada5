"""Signing and verification of artifact manifests (offline keys by default, sigstore when configured)."""
