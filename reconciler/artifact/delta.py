"""Binary deltas between two versions of a model file: zstd with the old file as the reference ("patch-from").

Who calls it: the artifact store (makes and caches deltas for the artifact server) and the agent (applies
them to the file in its previous slot). A delta is only a transport saving: the rebuilt file must have the
sha256 that the signed metadata names, and anything else (a corrupt delta, the wrong base) fails that check
and falls back to the full download. zstd's long-distance matching finds the unchanged tensors of a model
wherever they moved; changed weights cost what they cost.
"""

from __future__ import annotations

import zstandard

LEVEL = 19
MAX_WINDOW_LOG = 31


def make_delta(old: bytes, new: bytes) -> bytes:
    reference = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    window = max(17, min(MAX_WINDOW_LOG, (max(len(old), len(new)) * 2).bit_length()))
    params = zstandard.ZstdCompressionParameters.from_level(
        LEVEL, window_log=window, enable_ldm=True, source_size=len(new), write_content_size=True
    )
    return zstandard.ZstdCompressor(dict_data=reference, compression_params=params).compress(new)


def apply_delta(old: bytes, delta: bytes, max_size: int) -> bytes:
    """The new file from ``old`` and ``delta``; raises ``zstandard.ZstdError`` on a corrupt delta."""
    reference = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdDecompressor(dict_data=reference, max_window_size=1 << MAX_WINDOW_LOG).decompress(
        delta, max_output_size=max_size
    )
