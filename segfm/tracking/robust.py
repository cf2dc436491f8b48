"""Robust fits of point correspondences: Huber IRLS regression, rigid (Kabsch) and affine.

Every function works on ``[N, 3]`` point arrays in one consistent frame (world mm in
``segfm register``) and returns ``(4, 4)`` homogeneous matrices mapping the first point set
onto the second (``dst ≈ T @ src``). Pure numpy; replaces the original's statsmodels ``RLM``.
"""

from __future__ import annotations

import numpy as np

#: Huber's tuning constant (95% efficiency under Gaussian noise), statsmodels' default
HUBER_T = 1.345
#: normalises the median absolute deviation to the standard deviation of a Gaussian
_MAD_TO_SIGMA = 0.6745


def huber_irls(
    design: np.ndarray,
    target: np.ndarray,
    t: float = HUBER_T,
    max_iter: int = 50,
    tol: float = 1e-8,
) -> np.ndarray:
    """Huber M-estimator of a linear model by iteratively reweighted least squares.

    As statsmodels' ``RLM(target, design).fit()`` with its defaults: Huber weights
    ``min(1, t / |r / s|)``, scale ``s`` re-estimated each iteration as the median absolute
    residual / 0.6745.

    Args:
        design: ``[N, P]`` design matrix (add a column of ones for an intercept).
        target: ``[N]`` or ``[N, K]`` responses (each column fitted on its own).
        t: Huber's threshold in units of the scale.
        max_iter: Most reweighting iterations.
        tol: Stop when no coefficient changes by more than this.

    Returns:
        ``[P]`` or ``[P, K]`` coefficients.

    Raises:
        ValueError: If shapes disagree or there are no rows.
    """
    design = np.asarray(design, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if design.ndim != 2 or target.shape[0] != design.shape[0] or design.shape[0] == 0:
        msg = f"design {design.shape} and target {target.shape} must share a non-zero first axis"
        raise ValueError(msg)
    if target.ndim == 2:
        cols = [huber_irls(design, target[:, k], t, max_iter, tol) for k in range(target.shape[1])]
        return np.stack(cols, axis=1)
    beta = np.linalg.lstsq(design, target, rcond=None)[0]
    for _ in range(max_iter):
        resid = target - design @ beta
        scale = np.median(np.abs(resid)) / _MAD_TO_SIGMA
        if scale <= 1e-12:  # (more than) half the points fit exactly: they decide
            break
        u = np.abs(resid) / scale
        w = np.minimum(1.0, t / np.maximum(u, 1e-12))
        sw = np.sqrt(w)
        new = np.linalg.lstsq(design * sw[:, None], target * sw, rcond=None)[0]
        done = np.max(np.abs(new - beta)) <= tol
        beta = new
        if done:
            break
    return beta


def _check_pairs(src: np.ndarray, dst: np.ndarray, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    src = np.asarray(src, dtype=np.float64).reshape(-1, 3)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 3)
    if src.shape != dst.shape:
        msg = f"point sets differ in shape: {src.shape} vs {dst.shape}"
        raise ValueError(msg)
    if len(src) < minimum:
        msg = f"need at least {minimum} correspondences, got {len(src)}"
        raise ValueError(msg)
    return src, dst


def _homogeneous(linear: np.ndarray, shift: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = linear, shift
    return out


def kabsch(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted least-squares rigid transform (rotation + translation, no reflection).

    Args:
        src: ``[N, 3]`` points.
        dst: ``[N, 3]`` corresponding points.
        weights: ``[N]`` non-negative weights (default all 1).

    Returns:
        ``(4, 4)`` rigid ``T`` minimising ``sum w |T src - dst|²``.
    """
    src, dst = _check_pairs(src, dst, 3)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / max(w.sum(), 1e-12)
    mu_s, mu_d = w @ src, w @ dst
    cov = ((dst - mu_d) * w[:, None]).T @ (src - mu_s)
    u, _, vt = np.linalg.svd(cov)
    fix = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ fix @ vt
    return _homogeneous(rot, mu_d - rot @ mu_s)


def rotation_angle(transform: np.ndarray) -> float:
    """Rotation angle in radians of the linear part of a rigid transform."""
    rot = np.asarray(transform)[:3, :3]
    return float(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1.0, 1.0)))


def clip_rotation(transform: np.ndarray, max_angle: float, centre: np.ndarray) -> np.ndarray:
    """Limit the rotation of a rigid transform, keeping where it sends ``centre``.

    Args:
        transform: ``(4, 4)`` rigid transform.
        max_angle: Largest rotation in radians (the original clipped at 0.2).
        centre: ``[3]`` point whose image is preserved (the centroid of the matches).

    Returns:
        ``(4, 4)`` rigid transform rotating by at most ``max_angle`` about the same axis.
    """
    angle = rotation_angle(transform)
    if angle <= max_angle:
        return np.asarray(transform, dtype=np.float64)
    rot = transform[:3, :3]
    axis = np.array([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]])
    axis = axis / max(np.linalg.norm(axis), 1e-12)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    new = np.eye(3) + np.sin(max_angle) * k + (1 - np.cos(max_angle)) * k @ k  # Rodrigues
    moved = transform[:3, :3] @ centre + transform[:3, 3]
    return _homogeneous(new, moved - new @ centre)


def fit_affine_lstsq(
    src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """Weighted least-squares affine transform.

    Args:
        src: ``[N, 3]`` points (N ≥ 4, not coplanar).
        dst: ``[N, 3]`` corresponding points.
        weights: ``[N]`` non-negative weights.

    Returns:
        ``(4, 4)`` affine ``T`` minimising ``sum w |T src - dst|²``.
    """
    src, dst = _check_pairs(src, dst, 4)
    design = np.concatenate([src, np.ones((len(src), 1))], axis=1)
    sw = np.ones(len(src)) if weights is None else np.sqrt(np.asarray(weights, np.float64))
    coef = np.linalg.lstsq(design * sw[:, None], dst * sw[:, None], rcond=None)[0]  # [4, 3]
    return _homogeneous(coef[:3].T, coef[3])


def residuals(transform: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``[N]`` distances ``|T src - dst|``."""
    src = np.asarray(src, dtype=np.float64).reshape(-1, 3)
    moved = src @ transform[:3, :3].T + transform[:3, 3]
    return np.linalg.norm(moved - np.asarray(dst).reshape(-1, 3), axis=1)


def ransac(
    src: np.ndarray,
    dst: np.ndarray,
    kind: str = "affine",
    threshold: float = 4.0,
    iterations: int = 500,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """RANSAC over minimal samples, then a least-squares refit on the inliers.

    Args:
        src: ``[N, 3]`` points.
        dst: ``[N, 3]`` corresponding points.
        kind: ``"affine"`` (4-point samples) or ``"rigid"`` (3-point samples, Kabsch).
        threshold: Largest residual of an inlier, in the points' unit (mm).
        iterations: Number of random samples.
        seed: Seed of the sampler (reproducible fits).

    Returns:
        The ``(4, 4)`` transform and the boolean ``[N]`` inlier mask.

    Raises:
        ValueError: If ``kind`` is unknown or there are too few points.
    """
    if kind not in ("affine", "rigid"):
        msg = f"kind must be 'affine' or 'rigid', got {kind!r}"
        raise ValueError(msg)
    size = 4 if kind == "affine" else 3
    src, dst = _check_pairs(src, dst, size)
    fit = fit_affine_lstsq if kind == "affine" else kabsch
    rng = np.random.default_rng(seed)
    best = np.ones(len(src), dtype=bool)
    best_count = -1
    for _ in range(iterations):
        pick = rng.choice(len(src), size, replace=False)
        with np.errstate(all="ignore"):
            try:
                candidate = fit(src[pick], dst[pick])
            except np.linalg.LinAlgError:
                continue
        inliers = residuals(candidate, src, dst) < threshold
        if inliers.sum() > best_count:
            best, best_count = inliers, int(inliers.sum())
    if best.sum() < size:
        best = np.ones(len(src), dtype=bool)
    transform = fit(src[best], dst[best])
    inliers = residuals(transform, src, dst) < threshold  # refit once on the refined set
    if inliers.sum() >= size:
        transform, best = fit(src[inliers], dst[inliers]), inliers
    return transform, best
