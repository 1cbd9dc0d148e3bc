"""Deterministic DICOM UIDs.

Reruns from the same seed must give byte-identical files (reproducible tests, cache-friendly
workflows), so UIDs are derived from a stable key instead of the clock or a random source.
"""

from __future__ import annotations

from pydicom.uid import UID, generate_uid

#: pydicom's registered prefix; the suffix is a hash of the key, so different keys never collide in practice.
_PREFIX = "1.2.826.0.1.3680043.8.498."


def stable_uid(*key: object) -> UID:
    """UID determined by ``key`` (e.g. ``stable_uid(seed, "P001", "ct", "sop", 12)``).

    pydicom hashes the concatenation of its entropy sources, so the key's parts are joined with
    a separator first: without it ("sop", 1, 12) and ("sop", 11, 2) would give the same UID
    (which silently overwrote DCE frames of 16-slice slabs).
    """
    return generate_uid(prefix=_PREFIX, entropy_srcs=["isotox", "\x1f".join(map(str, key))])
