"""The controller: Git source, reconcile to a backend, artifact serving, status written back to Git."""
