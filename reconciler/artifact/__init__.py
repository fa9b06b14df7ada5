"""The artifact format that the controller and the devices share: manifest, content-addressed store, deltas, and
the one inference runner (onnxruntime and LiteRT).

No TensorFlow and nothing of the build toolchain (``reconciler.optimize``): agents install this package with the
runtime dependencies only, and an import contract keeps it so.
"""
