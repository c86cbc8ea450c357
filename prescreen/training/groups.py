"""Groups of near-identical records, so that no group straddles a split.

BUSI holds several images of one patient and lesion (the same scan, re-cropped or re-captured)
and no patient ids; a split by image lets the model be tested on a near-copy of what it trained on.
Images are grouped by perceptual hash (pHash: the sign of the low-frequency 8x8 DCT block of a
32x32 reduction against its median — the algorithm of ``imagehash.phash``): two images whose
hashes differ in at most ``max_distance`` of 64 bits are near-duplicates, and groups are the
connected components of that relation. Records of other kinds (ECG) are their own group: CinC
2017 has no patient ids, so the record is the unit.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.fft import dctn
from scipy.ndimage import zoom

from prescreen.models.task import FloatArray

IntArray = npt.NDArray[np.int64]
HASH_SIZE = 8
REDUCED = 32
DEFAULT_MAX_DISTANCE = 10
"""Hamming distance (of 64 bits) up to which two images count as the same scene. On the 624 BUSI
images here, pairs per distance are 0: 7, 2: 30, 4: 37, 6: 28, 8: 28, 10: 14, 12: 23, 14: 37, then
16: 174, 18: 612, 20: 2,031 (unrelated images). At 10 bits the images form 502 groups, 98 of them
with more than one image (largest 5); 5 of the 98 mix labels (a normal image beside a benign one
of the same scene). See README "Validation"."""


def phash(image: FloatArray) -> npt.NDArray[np.bool_]:
    """The 64-bit perceptual hash of one 2-D image (any size, any intensity scale)."""
    if image.ndim != 2:
        raise ValueError(f"pHash takes one 2-D image, not shape {image.shape}")
    small = zoom(image.astype(np.float64), (REDUCED / image.shape[0], REDUCED / image.shape[1]), order=1)
    low = dctn(small, norm="ortho")[:HASH_SIZE, :HASH_SIZE]
    bits: npt.NDArray[np.bool_] = (low > np.median(low)).ravel()
    return bits


def _components(n: int, pairs: npt.NDArray[np.int64]) -> IntArray:
    """Connected components (union-find) of ``n`` nodes joined by ``pairs``; labels 0..k-1 in order of first node."""
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for a, b in pairs:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.asarray([find(i) for i in range(n)])
    _, labels = np.unique(roots, return_inverse=True)
    out: IntArray = labels.astype(np.int64)
    return out


def near_duplicate_groups(signals: list[FloatArray], max_distance: int = DEFAULT_MAX_DISTANCE) -> IntArray:
    """A group id per record: images (``(frames, H, W)``, the first frame hashed) within
    ``max_distance`` pHash bits of each other share a group, transitively."""
    if not signals:
        return np.zeros(0, dtype=np.int64)
    hashes = _hashes(signals)
    i, j = np.nonzero(np.triu(_hamming(hashes, hashes) <= max_distance, k=1))
    return _components(len(signals), np.stack([i, j], axis=1).astype(np.int64))


def record_groups(n: int) -> IntArray:
    """Every record its own group (no patient ids to group by)."""
    return np.arange(n, dtype=np.int64)


def _hashes(images: list[FloatArray]) -> IntArray:
    """pHash bits (as 0/1 integers) of each image, ``(frames, H, W)`` by its first frame."""
    bits = [phash(np.asarray(s)[0] if np.asarray(s).ndim == 3 else np.asarray(s)) for s in images]
    out: IntArray = np.stack(bits).astype(np.int64)
    return out


def _hamming(a: IntArray, b: IntArray) -> IntArray:
    """Hamming distance of every row of ``a`` to every row of ``b`` (0/1 hash bits)."""
    out: IntArray = a @ (1 - b).T + (1 - a) @ b.T
    return out


def nearest_distance(queries: list[FloatArray], references: list[FloatArray]) -> IntArray:
    """Per query image, the pHash distance (bits of 64) to its nearest reference image (64 when
    there is no reference)."""
    if not queries:
        return np.zeros(0, dtype=np.int64)
    if not references:
        return np.full(len(queries), HASH_SIZE * HASH_SIZE, dtype=np.int64)
    q, r = _hashes(queries), _hashes(references)
    nearest = np.full(len(q), HASH_SIZE * HASH_SIZE, dtype=np.int64)
    for start in range(0, len(r), 2048):  # bounded memory: a block of references at a time
        nearest = np.minimum(nearest, _hamming(q, r[start : start + 2048]).min(axis=1))
    return nearest
