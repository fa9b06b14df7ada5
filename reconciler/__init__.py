"""edge-reconciler: declarative GitOps delivery of machine-learning models to edge device fleets."""
