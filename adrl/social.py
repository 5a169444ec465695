"""The social graph of a scenario and the spread of shares on it (independent cascades, vectorised).

Maths, for a share by user i of creative c (``Scenario.social`` holds α, β and the logits):

    S(i, j)   tie strength of the edge (symmetric; generated ~ Uniform(tie_strength) or read from the edge list)
    D(j)      = Σ_k S(k, j), j's total tie strength;   N(j) = j's number of friends
    C(i, j)   = exp(−‖θ_i − θ_j‖² / K), the interest similarity of i and j (θ: hidden interests, K categories)
    P(i→j)    = α · S(i, j) / D(j) + β · C(i, j) / N(j)               (≤ 1 when α + β ≤ 1)

Each hop every new sharer tries each friend once (one uniform draw per edge); a friend reached for a creative they
were not exposed to yet gets an organic exposure: they click organically with σ(organic_click_logit + w_a·affinity),
convert with the click's conversion probability lifted by ``conversion_lift``, and share with the share probability,
which starts the next hop (at most ``max_hops``). The sharer counts as exposed, so nobody is reached twice for one
creative on one day.

All draws come from the generator passed in (the envs keep one apart from the base streams, so a market whose
sharing reaches nobody draws exactly what the base env draws).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import sparse

from adrl.errors import ConfigError, DataError
from adrl.scenario import Scenario, Social

NOT_EXPOSED = np.iinfo(np.int64).max  # exposure epoch of a creative nobody shared with the user


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class SocialGraph:
    """An undirected graph with tie strengths, stored as a symmetric CSR matrix of ``n`` users.

    ``segment`` is the segment of each user when the graph fixes it (the block model), else None.
    """

    strength: sparse.csr_matrix  # (n, n) S(i, j), symmetric, no diagonal
    segment: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        return int(self.strength.shape[0])

    @property
    def degree(self) -> np.ndarray:
        """N(j): friends of each user, shape (n,) int64."""
        return np.diff(self.strength.indptr).astype(np.int64)

    @property
    def total_strength(self) -> np.ndarray:
        """D(j): the sum of each user's tie strengths, shape (n,)."""
        return np.asarray(self.strength.sum(axis=1)).ravel()

    @classmethod
    def from_edges(
        cls, n_users: int, i: np.ndarray, j: np.ndarray, strength: np.ndarray, *, segment: np.ndarray | None = None
    ) -> SocialGraph:
        """A graph from undirected edges (each listed once, either way round) and their tie strengths."""
        i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
        w = np.asarray(strength, dtype=np.float64)
        rows, cols = np.concatenate([i, j]), np.concatenate([j, i])
        m = sparse.csr_matrix((np.concatenate([w, w]), (rows, cols)), shape=(n_users, n_users))
        m.sort_indices()
        return cls(strength=m, segment=segment)


def _sizes(shares: np.ndarray, n: int) -> np.ndarray:
    """Block sizes summing to ``n`` in proportion to ``shares`` (largest remainders)."""
    raw = shares / shares.sum() * n
    sizes = np.floor(raw).astype(np.int64)
    sizes[np.argsort(-(raw - sizes), kind="stable")[: n - int(sizes.sum())]] += 1
    return sizes


def build_graph(scenario: Scenario, n_users: int) -> SocialGraph:
    """The scenario's graph over ``n_users`` users (generated with networkx from ``social.seed``, or read).

    Raises:
        ConfigError: the scenario has no ``social`` section, or the edge list does not fit ``n_users``.
        DataError: the edge list file is missing or malformed (the message names the file and line).
    """
    import networkx as nx  # imported here: only generated graphs need it

    soc = scenario.social
    if soc is None:
        raise ConfigError("the scenario has no social section; add `social: {}` for the default graph")
    if soc.graph == "edges":
        return read_edge_list(Path(str(soc.edges)), n_users, soc)
    rng = np.random.default_rng([soc.seed, n_users])
    graph_seed = int(rng.integers(2**31 - 1))
    segment = None
    k = soc.mean_degree
    if soc.graph == "sbm":
        shares = np.array([s.share for s in scenario.segments])
        sizes = _sizes(shares, n_users)
        b = len(sizes)
        # within-block friends: within_segment · k; the rest spread over the other blocks by their sizes
        p = np.empty((b, b))
        for a in range(b):
            others = n_users - sizes[a]
            for c in range(b):
                if a == c:
                    p[a, c] = soc.within_segment * k / max(sizes[a] - 1, 1)
                else:
                    p[a, c] = (1.0 - soc.within_segment) * k / max(others, 1)
        p = np.minimum((p + p.T) / 2.0, 1.0)
        edges = _block_model(sizes, p, np.random.default_rng(graph_seed))
        segment = np.repeat(np.arange(b, dtype=np.int64), sizes)
    elif soc.graph == "small_world":
        half = max(1, round(k / 2))
        g = nx.watts_strogatz_graph(n_users, min(2 * half, n_users - 1), soc.rewiring, seed=graph_seed)
        edges = np.array(g.edges(), dtype=np.int64).reshape(-1, 2)
    else:
        m = max(1, min(round(k / 2), n_users - 1))
        g = nx.barabasi_albert_graph(n_users, m, seed=graph_seed)
        edges = np.array(g.edges(), dtype=np.int64).reshape(-1, 2)
    low, high = soc.tie_strength
    strength = np.asarray(rng.uniform(low, high, size=edges.shape[0]))
    return SocialGraph.from_edges(n_users, edges[:, 0], edges[:, 1], strength, segment=segment)


def _block_model(sizes: np.ndarray, p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Edges (m, 2) of a stochastic block model: every pair of users in blocks a, b is a friendship with
    probability p[a, b], independently.

    Sampled exactly as the edge count of each block pair ~ Binomial(pairs, p) and that many distinct pairs drawn
    uniformly; networkx's ``stochastic_block_model`` gives the same distribution but took 79 s for 100,000 users.
    """
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    parts = []
    for a in range(len(sizes)):
        for b in range(a, len(sizes)):
            sa, sb = int(sizes[a]), int(sizes[b])
            pairs = sa * (sa - 1) // 2 if a == b else sa * sb
            if pairs == 0 or p[a, b] <= 0:
                continue
            k = rng.choice(pairs, size=int(rng.binomial(pairs, p[a, b])), replace=False)
            if a == b:  # pair index k -> (i, j), j < i: k = i (i - 1) / 2 + j
                i = ((np.sqrt(8.0 * k + 1.0) + 1.0) // 2).astype(np.int64)
                i -= i * (i - 1) // 2 > k  # float rounding, either way
                i += (i + 1) * i // 2 <= k
                j = k - i * (i - 1) // 2
                parts.append(np.stack([first[a] + i, first[a] + j], axis=1))
            else:
                parts.append(np.stack([first[a] + k // sb, first[b] + k % sb], axis=1))
    return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)


def read_edge_list(path: Path, n_users: int, soc: Social) -> SocialGraph:
    """Read ``i j [tie_strength]`` lines (whitespace or commas; ``#`` starts a comment); ids in 0..n_users-1.

    A missing strength is the middle of ``social.tie_strength``. Self-loops, duplicate edges, ids out of range and
    strengths that are not positive finite numbers are refused with the file and line.
    """
    if not path.is_file():
        raise DataError(f"social.edges: {path} does not exist; expected a text file of 'i j [tie_strength]' lines")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"social.edges: cannot read {path} as text ({e})") from e
    default = float(np.mean(soc.tie_strength))
    src, dst, w = [], [], []
    seen: dict[tuple[int, int], int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].replace(",", " ").split()
        if not line:
            continue
        where = f"{path}, line {lineno}"
        if len(line) not in (2, 3):
            raise DataError(f"{where}: expected 'i j' or 'i j tie_strength', got {raw.strip()!r}")
        try:
            a, b = int(line[0]), int(line[1])
        except ValueError:
            raise DataError(f"{where}: user ids must be integers, got {line[0]!r} {line[1]!r}") from None
        try:
            s = float(line[2]) if len(line) == 3 else default
        except ValueError:
            raise DataError(f"{where}: tie strength must be a number, got {line[2]!r}") from None
        if not (0 <= a < n_users and 0 <= b < n_users):
            raise DataError(f"{where}: user id out of range 0..{n_users - 1} (the population has {n_users} users)")
        if a == b:
            raise DataError(f"{where}: self-loop {a}-{b}; a user is not their own friend")
        if not (np.isfinite(s) and s > 0):
            raise DataError(f"{where}: tie strength must be a positive finite number, got {s:g}")
        key = (min(a, b), max(a, b))
        if key in seen:
            raise DataError(f"{where}: duplicate edge {a}-{b} (first on line {seen[key]}); list each friendship once")
        seen[key] = lineno
        src.append(a)
        dst.append(b)
        w.append(s)
    if not src:
        raise DataError(f"social.edges: {path} lists no edges")
    return SocialGraph.from_edges(n_users, np.array(src), np.array(dst), np.array(w))


def edge_list_size(path: Path | str) -> int:
    """Users an edge list needs: its largest id + 1 (for envs sized by the file)."""
    biggest = -1
    p = Path(path)
    if not p.is_file():
        raise DataError(f"social.edges: {p} does not exist; expected a text file of 'i j [tie_strength]' lines")
    for raw in p.read_text().splitlines():
        parts = raw.split("#", 1)[0].replace(",", " ").split()[:2]
        for v in parts:
            if v.lstrip("-").isdigit():
                biggest = max(biggest, int(v))
    return biggest + 1


def similarity(interest_i: np.ndarray, interest_j: np.ndarray) -> np.ndarray:
    """C(i, j) = exp(−‖θ_i − θ_j‖² / K) row by row, shape (m,); 1 for equal interests."""
    d = interest_i - interest_j
    return np.exp(-np.einsum("mk,mk->m", d, d) / d.shape[1])


class Cascade(NamedTuple):
    """What one step's shares caused, each shape (n_users,) over the population unless said otherwise."""

    credit: np.ndarray  # organic conversion revenue credited to each root sharer's decision (float64)
    reached: np.ndarray  # organic exposures caused by each root sharer's decision (int64)
    organic_conversions: np.ndarray  # organic conversions credited to each root sharer (int64)
    reached_by_hop: np.ndarray  # (max_hops,) new exposures at each hop (int64)


class Propagation:
    """P(i→j) on a graph for users with given interests, and the cascade of a batch of shares (see module doc).

    Args:
        graph: the social graph (``n`` users).
        interest: (n, K) hidden interests (for C and the organic responses).
        segment: (n,) segments (conversion propensity of the organic conversions).
        scenario: the market (``social`` must be set).
    """

    def __init__(self, graph: SocialGraph, interest: np.ndarray, segment: np.ndarray, scenario: Scenario) -> None:
        soc = scenario.social
        if soc is None:
            raise ConfigError("the scenario has no social section; add `social: {}` for the default graph")
        self.soc, self.graph = soc, graph
        s = graph.strength
        self.indptr, self.indices = s.indptr, s.indices
        src = np.repeat(np.arange(graph.n_users), np.diff(s.indptr))  # edge i→j sits in row i
        dst = s.indices.astype(np.int64)
        d = graph.total_strength
        n_friends = graph.degree
        self.prob = (
            soc.alpha * s.data / d[dst] + soc.beta * similarity(interest[src], interest[dst]) / n_friends[dst]
        )  # P(i→j), per stored edge
        latents = scenario.creative_latents()
        dyn = scenario.dynamics
        self.affinity = interest @ latents.T  # (n, C)
        conv_prop = np.array([sg.conversion_propensity for sg in scenario.segments])[segment]
        shareability = np.array([soc.shareability.get(c.name, 0.0) for c in scenario.creatives])
        self.p_organic_click = _sigmoid(soc.organic_click_logit + dyn.affinity_weight * self.affinity)
        self.p_organic_conversion = _sigmoid(
            dyn.base_conversion_logit + conv_prop[:, None] + dyn.conversion_affinity_weight * self.affinity
            + soc.conversion_lift
        )  # fmt: skip
        self.p_share = _sigmoid(soc.share_logit + soc.share_affinity_weight * self.affinity + shareability[None, :])
        self.conversion_reward = scenario.reward_table.conversion_reward
        self.n_users = graph.n_users

    def cascade(
        self,
        sharer: np.ndarray,
        creative: np.ndarray,
        epoch: np.ndarray,
        exposed: np.ndarray,
        rng: np.random.Generator,
    ) -> Cascade:
        """Spread shares by ``sharer`` (m,) of ``creative`` (m,) made at ``epoch`` (m,), up to ``max_hops`` hops.

        ``exposed`` (n, n_creatives) int64 holds the epoch from which each user is exposed to each creative
        (``NOT_EXPOSED`` if not); it is updated in place (sharers included). Draws, per hop: one uniform per edge
        tried, then three per newly reached user (click, conversion, share).
        """
        n = self.n_users
        credit = np.zeros(n)
        reached = np.zeros(n, dtype=np.int64)
        conversions = np.zeros(n, dtype=np.int64)
        by_hop = np.zeros(self.soc.max_hops, dtype=np.int64)
        n_creatives = exposed.shape[1]
        root = sharer = np.asarray(sharer, dtype=np.int64)
        creative = np.asarray(creative, dtype=np.int64)
        at = np.asarray(epoch, dtype=np.int64)
        exposed[sharer, creative] = np.minimum(exposed[sharer, creative], at)
        for hop in range(self.soc.max_hops):
            if sharer.size == 0:
                break
            start = self.indptr[sharer]
            deg = self.indptr[sharer + 1] - start
            total = int(deg.sum())
            if total == 0:
                break
            # edge ids of every sharer's friends, in order: start[k] + 0 .. deg[k] - 1
            owner = np.repeat(np.arange(sharer.size), deg)
            edge = start[owner] + (np.arange(total) - np.repeat(np.cumsum(deg) - deg, deg))
            hit = rng.random(total) < self.prob[edge]
            owner, target = owner[hit], self.indices[edge[hit]].astype(np.int64)
            c = creative[owner]
            new = exposed[target, c] == NOT_EXPOSED
            owner, target, c = owner[new], target[new], c[new]
            key = target * n_creatives + c
            _, first = np.unique(key, return_index=True)  # reached by several sharers at once: the first counts
            first.sort()
            owner, target, c = owner[first], target[first], c[first]
            r = root[owner]
            when = at[owner] + 1
            exposed[target, c] = when
            k = target.size
            by_hop[hop] = k
            np.add.at(reached, r, 1)
            u = rng.random((k, 3))  # organic click, conversion, share: always in this order
            click = u[:, 0] < self.p_organic_click[target, c]
            convert = click & (u[:, 1] < self.p_organic_conversion[target, c])
            share = click & (u[:, 2] < self.p_share[target, c])
            np.add.at(credit, r[convert], self.conversion_reward[c[convert]])
            np.add.at(conversions, r[convert], 1)
            sharer, creative, root, at = target[share], c[share], r[share], when[share]
        return Cascade(credit=credit, reached=reached, organic_conversions=conversions, reached_by_hop=by_hop)
