"""User profiling: KMeans segments of users from their features, for logs without a segment column (e.g. OBD).

The segment id of each user is the nearest centroid of its standardised feature vector; it feeds the behavior model
as a categorical input like the simulator's segments. Centroids and scaling are saved with the model's weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans

from adrl.errors import ArtifactError, ConfigError


@dataclass(frozen=True)
class UserProfiler:
    """Nearest-centroid segmentation; ``centers`` (k, d) live in the standardised space ``(x - mean) / scale``."""

    centers: np.ndarray
    mean: np.ndarray
    scale: np.ndarray

    @property
    def n_clusters(self) -> int:
        return int(self.centers.shape[0])

    @classmethod
    def fit(cls, x: np.ndarray, n_clusters: int, *, rng: np.random.Generator, max_rows: int = 50_000) -> UserProfiler:
        """KMeans on at most ``max_rows`` rows of ``x`` (n, d), sampled with ``rng``; seeds come from ``rng`` too."""
        x = np.asarray(x, dtype=np.float64)
        if n_clusters < 1:
            raise ConfigError(f"the number of clusters must be >= 1, got {n_clusters}")
        if x.ndim != 2 or x.shape[0] < n_clusters:
            raise ConfigError(f"KMeans with {n_clusters} clusters needs at least that many users, got {x.shape[0]}")
        if x.shape[0] > max_rows:
            x = x[rng.choice(x.shape[0], size=max_rows, replace=False)]
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale < 1e-9] = 1.0
        z = (x - mean) / scale
        km = KMeans(n_clusters=n_clusters, n_init=4, random_state=int(rng.integers(2**31 - 1))).fit(z)
        return cls(
            centers=km.cluster_centers_.astype(np.float32),
            mean=mean.astype(np.float32),
            scale=scale.astype(np.float32),
        )

    def assign(self, x: np.ndarray) -> np.ndarray:
        """Segment id (int64, (n,)) of each row of ``x`` (n, d)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.centers.shape[1]:
            raise ValueError(f"profile features must have shape (n, {self.centers.shape[1]}), got {x.shape}")
        z = (x - self.mean) / self.scale
        # |z - c|^2 = |z|^2 - 2 z.c + |c|^2; |z|^2 does not change the argmin
        d = (self.centers**2).sum(axis=1)[None, :] - 2.0 * z @ self.centers.T
        return np.asarray(d.argmin(axis=1), dtype=np.int64)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"profiler.centers": self.centers, "profiler.mean": self.mean, "profiler.scale": self.scale}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], *, source: str = "weights.safetensors") -> UserProfiler:
        try:
            centers, mean, scale = (arrays[f"profiler.{k}"] for k in ("centers", "mean", "scale"))
        except KeyError as e:
            raise ArtifactError(f"{source}: the user profiler's {e.args[0]!r} tensor is missing") from e
        if centers.ndim != 2 or mean.shape != (centers.shape[1],) or scale.shape != mean.shape:
            raise ArtifactError(
                f"{source}: profiler tensors have inconsistent shapes {centers.shape}, {mean.shape}, {scale.shape}"
            )
        return cls(centers=centers, mean=mean, scale=scale)
