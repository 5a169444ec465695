"""One validator per kind of off-policy data: bandit rows and sequential (episode, step) rows.

Each returns the arrays as contiguous float64 / int64 and raises :class:`adrl.errors.DataError` with a message
that names the argument, the first bad row, its value and how many rows are bad.
"""

from __future__ import annotations

import numpy as np

from adrl.errors import DataError


def as_vector(x: object, name: str, *, n: int | None = None, dtype: type = np.float64) -> np.ndarray:
    """``x`` as a 1-D array of ``dtype``; checks its length against ``n`` when given."""
    try:
        arr: np.ndarray = np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise DataError(f"{name} must be numeric, got {type(x).__name__} ({e})") from None
    if arr.ndim != 1:
        raise DataError(f"{name} must have shape (n,), got {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise DataError(f"{name} has {arr.shape[0]} rows, expected {n} (one per logged decision)")
    return np.ascontiguousarray(arr)


def check_finite(x: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{name} must be finite, got {float(x[i]):g} at row {i} ({int(bad.sum())} of {x.size} rows)")


def check_in_unit_interval(x: np.ndarray, name: str, *, open_low: bool, hint: str = "") -> None:
    """Values in (0, 1] when ``open_low`` else [0, 1]; NaN is out of range."""
    ok = ((x > 0) if open_low else (x >= 0)) & (x <= 1)
    if not ok.all():
        bad = ~ok
        i = int(np.flatnonzero(bad)[0])
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise DataError(
            f"{name} must be in {interval}, got {float(x[i]):g} at row {i} "
            f"({int(bad.sum())} of {x.size} rows out of range){hint}"
        )


def check_bandit_inputs(
    reward: object,
    propensity: object,
    target_prob: object,
    q_logged: object | None = None,
    q_target: object | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Validate per-row bandit data, each shape (n,) with n >= 1.

    Args:
        reward: observed reward of the logged action (finite).
        propensity: π_b(a|x) of the logged action, in (0, 1].
        target_prob: π_e(a|x) of the logged action, in [0, 1].
        q_logged: reward model's q(x, a) of the logged action (finite), if used.
        q_target: reward model's Σ_a' π_e(a'|x) q(x, a') (finite), if used.

    Returns:
        The arrays as float64, in the same order.

    Raises:
        DataError: a length mismatch, NaN or infinite value, or a probability out of range; the message names
            the argument, the first bad row and its value.
    """
    r = as_vector(reward, "reward")
    n = r.shape[0]
    if n == 0:
        raise DataError("no logged decisions: reward is empty")
    p = as_vector(propensity, "propensity", n=n)
    t = as_vector(target_prob, "target_prob", n=n)
    check_finite(r, "reward")
    check_in_unit_interval(
        p, "propensity", open_low=True, hint="; was the log written by a deterministic policy without exploration?"
    )
    check_in_unit_interval(t, "target_prob", open_low=False)
    ql = qt = None
    if q_logged is not None:
        ql = as_vector(q_logged, "q_logged", n=n)
        check_finite(ql, "q_logged")
    if q_target is not None:
        qt = as_vector(q_target, "q_target", n=n)
        check_finite(qt, "q_target")
    return r, p, t, ql, qt


def check_sequential_inputs(
    episode_id: object,
    step: object,
    reward: object,
    propensity: object,
    target_prob: object,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate per-row episodic data (as :func:`check_bandit_inputs`, plus episode ids and steps).

    ``episode_id`` and ``step`` are integers, shape (n,); steps are >= 0 and each (episode, step) pair occurs once.
    Rows may come in any order.

    Returns:
        ``(episode_id, step, reward, propensity, target_prob)`` as int64, int64 and float64 arrays.
    """
    r, p, t, _, _ = check_bandit_inputs(reward, propensity, target_prob)
    n = r.shape[0]
    ep = _as_int_vector(episode_id, "episode_id", n)
    st = _as_int_vector(step, "step", n)
    if (st < 0).any():
        i = int(np.flatnonzero(st < 0)[0])
        raise DataError(f"step must be >= 0, got {int(st[i])} at row {i}")
    order = np.lexsort((st, ep))
    same = (ep[order][1:] == ep[order][:-1]) & (st[order][1:] == st[order][:-1])
    if same.any():
        i = int(order[1:][same][0])
        raise DataError(f"(episode_id, step) = ({int(ep[i])}, {int(st[i])}) occurs more than once (row {i})")
    return ep, st, r, p, t


def _as_int_vector(x: object, name: str, n: int) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        check_finite(as_vector(arr, name, n=n), name)
        if not (arr == np.round(arr)).all():
            i = int(np.flatnonzero(arr != np.round(arr))[0])
            raise DataError(f"{name} must hold integers, got {float(arr[i]):g} at row {i}")
    elif arr.dtype.kind not in "iub":
        raise DataError(f"{name} must hold integers, got dtype {arr.dtype}")
    return as_vector(arr, name, n=n, dtype=np.int64)
