"""ASMK image retrieval database on torch tensors (spec: network §7.3, SLAM §6.1).

The original uses the ``asmk`` package (Cython Hamming kernel, faiss, numpy loops per visual
word). This is the same scoring written with whole-tensor operations so it runs on the GPU:

* **quantisation**: squared L2 to every centroid via ``|q|^2 + |c|^2 - 2 q.c``; 5 nearest words
  per descriptor for a query, 1 for an insertion (an image added right after its own query reuses
  the first column of the query's assignment);
* **aggregation** per image and visual word: the sum of residuals ``x - c_w`` over every
  descriptor that has w among its assignments (``unique`` + ``index_add``), binarised by sign and
  bit-packed (MSB first, D bits -> ceil(D/8) bytes);
* **inverted file**: one flat set of tensors (word id, image id, packed bits) with amortised
  growth; a query finds the entries of its words with ``searchsorted`` over all entries;
* **score** of database image d: ``sum_w max(sim_w, 0)^3 / sqrt(|W_q| |W_d|)`` with
  ``sim_w = 1 - 2 hamming(b_q,w, b_d,w) / D`` (alpha 3, threshold 0, no idf), accumulated in
  float64; |W_q| counts every unique query word, |W_d| the words stored for image d.

Image ids are consecutive from 0 in insertion order (= keyframe ids in SLAM). Works for any
descriptor size D and codebook size K.
"""
from __future__ import annotations

import torch

__all__ = ["RetrievalDatabase", "pack_bits", "popcount_bytes"]

_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int32)
_BITW = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.int32)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """bool [U, D] -> uint8 [U, ceil(D/8)], element 0 in the most significant bit of byte 0."""
    U, D = bits.shape
    nbytes = (D + 7) // 8
    padded = torch.zeros(U, nbytes * 8, dtype=torch.int32, device=bits.device)
    padded[:, :D] = bits.to(torch.int32)
    return (padded.view(U, nbytes, 8) * _BITW.to(bits.device)).sum(-1).to(torch.uint8)


def popcount_bytes(x: torch.Tensor) -> torch.Tensor:
    """uint8 [..., nbytes] -> number of set bits per row [...] (int64), via a 256-entry table."""
    return _POPCOUNT.to(x.device)[x.long()].sum(-1, dtype=torch.int64)


class RetrievalDatabase:
    """ASMK binary inverted file over a fixed codebook.

    ``update(features, add_after_query, k, min_thresh)`` is the SLAM entry point; ``scores``,
    ``query`` and ``add`` are its parts.
    """

    def __init__(
        self,
        codebook: torch.Tensor,  # [K, D] centroids
        device=None,
        *,
        query_assignments: int = 5,
        insert_assignments: int = 1,
        alpha: float = 3.0,
        similarity_threshold: float = 0.0,
    ):
        if codebook.ndim != 2 or codebook.shape[0] < 1:
            raise ValueError(f"RetrievalDatabase: codebook must be [K, D], got {tuple(codebook.shape)}")
        self.device = torch.device(device) if device is not None else codebook.device
        self.centroids = codebook.detach().to(self.device, torch.float32).contiguous()
        self.c_sqnorm = (self.centroids**2).sum(-1)  # [K]
        self.K, self.D = self.centroids.shape
        self.nbytes = (self.D + 7) // 8
        self.query_assignments = min(query_assignments, self.K)
        self.insert_assignments = min(insert_assignments, self.K)
        self.alpha = alpha
        self.similarity_threshold = similarity_threshold
        self._size = 0  # entries used in the flat inverted file
        self._words = torch.empty(0, dtype=torch.int64, device=self.device)
        self._imgs = torch.empty(0, dtype=torch.int64, device=self.device)
        self._bits = torch.empty(0, self.nbytes, dtype=torch.uint8, device=self.device)
        self._norm = torch.empty(0, dtype=torch.float64, device=self.device)  # words per image
        self.n_images = 0

    def __len__(self) -> int:
        return self.n_images

    # ------------------------------------------------------------------ building blocks
    def _features(self, features: torch.Tensor) -> torch.Tensor:
        f = features.detach()
        if f.ndim == 3 and f.shape[0] == 1:
            f = f[0]
        if f.ndim != 2 or f.shape[1] != self.D:
            raise ValueError(f"RetrievalDatabase: features must be [k, {self.D}], got {tuple(features.shape)}")
        return f.to(self.device, torch.float32)

    def quantize(self, features: torch.Tensor, m: int) -> torch.Tensor:
        """Indices [k, m] of the m nearest centroids of each feature, nearest first."""
        f = self._features(features)
        dist = (f**2).sum(-1, keepdim=True) + self.c_sqnorm[None] - 2.0 * (f @ self.centroids.T)
        return dist.topk(min(m, self.K), dim=1, largest=False, sorted=True).indices

    def aggregate(self, features: torch.Tensor, assign: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sorted unique words [U], packed sign of the per-word residual sums [U, nbytes])."""
        f = self._features(features)
        n, m = assign.shape
        flat = assign.reshape(-1)
        words, inv = torch.unique(flat, sorted=True, return_inverse=True)
        rows = torch.arange(n, device=self.device).repeat_interleave(m)
        resid = f[rows] - self.centroids[flat]  # [n*m, D]
        sums = torch.zeros(words.shape[0], self.D, dtype=torch.float32, device=self.device)
        sums.index_add_(0, inv, resid)
        return words, pack_bits(sums > 0)

    def _append(self, words: torch.Tensor, bits: torch.Tensor, image_id: int) -> None:
        need = self._size + words.shape[0]
        if need > self._words.shape[0]:
            cap = max(need, 2 * self._words.shape[0], 1024)
            grow = lambda t, shape: torch.cat([t[: self._size], t.new_empty(shape)])  # noqa: E731
            self._words = grow(self._words, (cap - self._size,))
            self._imgs = grow(self._imgs, (cap - self._size,))
            self._bits = grow(self._bits, (cap - self._size, self.nbytes))
        sl = slice(self._size, need)
        self._words[sl] = words
        self._imgs[sl] = image_id
        self._bits[sl] = bits
        self._size = need

    # ------------------------------------------------------------------ public API
    def scores(self, features: torch.Tensor, assign: torch.Tensor | None = None) -> torch.Tensor:
        """ASMK scores [n_images] float64 of a query image (features [k, D]) against every image."""
        if assign is None:
            assign = self.quantize(features, self.query_assignments)
        qwords, qbits = self.aggregate(features, assign)
        out = torch.zeros(self.n_images, dtype=torch.float64, device=self.device)
        if self.n_images == 0 or self._size == 0:
            return out
        words = self._words[: self._size]
        pos = torch.searchsorted(qwords, words).clamp_(max=qwords.shape[0] - 1)
        hit = (qwords[pos] == words).nonzero().squeeze(1)  # entries sharing a query word
        qi = pos[hit]
        ham = popcount_bytes(self._bits[hit] ^ qbits[qi]).to(torch.float64)
        sim = 1.0 - 2.0 * ham / self.D
        w = torch.where(sim >= self.similarity_threshold, sim**self.alpha, torch.zeros_like(sim))
        out.index_add_(0, self._imgs[hit], w)
        return out / torch.sqrt(self._norm * float(qwords.shape[0]))

    def query(self, features: torch.Tensor, k: int = 3, min_thresh: float = 0.0, *, _assign=None) -> list[int]:
        """Ids of the (at most k) best-scoring images with score > min_thresh, best first (no insert)."""
        if self.n_images == 0:
            return []
        s = self.scores(features, _assign)
        top = s.topk(min(k, self.n_images))
        keep = top.values > min_thresh
        return [int(i) for i in top.indices[keep].tolist()]

    def add(self, features: torch.Tensor, assign: torch.Tensor | None = None) -> int:
        """Insert an image (1 visual word per feature unless ``assign`` [k, m] is given); returns its id."""
        if assign is None:
            assign = self.quantize(features, self.insert_assignments)
        words, bits = self.aggregate(features, assign)
        image_id = self.n_images
        self._append(words, bits, image_id)
        self._norm = torch.cat([self._norm, torch.tensor([float(words.shape[0])], dtype=torch.float64, device=self.device)])
        self.n_images += 1
        return image_id

    def update(self, features: torch.Tensor, add_after_query: bool, k: int, min_thresh: float) -> list[int]:
        """Query (if the database is not empty), then optionally insert, as SLAM's backend does.

        features: [k_feat, D] retrieval features of one image. Returns the retrieved image ids.
        """
        hits: list[int] = []
        assign = None
        if self.n_images > 0:
            assign = self.quantize(features, self.query_assignments)
            hits = self.query(features, k, min_thresh, _assign=assign)
        if add_after_query:
            self.add(features, assign[:, :1] if assign is not None else None)
        return hits
