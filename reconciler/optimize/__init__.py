"""The build toolchain: optimization passes, conversion, measurement and gates, packaging into the artifact store.

TensorFlow is imported lazily (6-9 s) and only here; its C++ logging is quieted before that happens,
since build output is read by people in CI logs.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
