"""An independent float64 NumPy transcription of docs/algorithm.md (spec
sections 1-3), written from the formulas, not from the Rust code."""

from __future__ import annotations

import numpy as np


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def classes(u, c):
    """y_i = argmax_k <u_i, c_k>, ties to the smallest k (np.argmax's rule)."""
    return np.argmax(u @ c.T, axis=1)


def phi(s, tau):
    if tau is None:
        return s
    return np.where(s > tau, s, 0.0)


def terms(u, v, c, y, tau):
    """[N, 4]: easy, cross, label, between for every row."""
    n = len(u)
    ks = sorted(set(y.tolist()))
    mi = {k: unit(u[y == k].sum(0)) for k in ks}
    mt = {k: unit(v[y == k].sum(0)) for k in ks}
    out = np.zeros((n, 4))
    for k in ks:
        idx = np.flatnonzero(y == k)
        uk, vk = u[idx], v[idx]
        s = uk @ vk.T  # s[i, j] = <u_i, v_j>
        cross = (phi(s, tau).sum(1) + phi(s.T, tau).sum(1)) / len(idx)
        others = [l for l in ks if l != k]
        if others:
            between = sum(np.maximum(0, uk @ mt[l]) + np.maximum(0, vk @ mi[l]) for l in others) / len(others)
        else:
            between = np.zeros(len(idx))
        out[idx, 0] = np.sum(uk * vk, 1)
        out[idx, 1] = cross
        out[idx, 2] = vk @ c[k]
        out[idx, 3] = between
    return out


def greedy(u, v, y, t, budget, refresh, tau, w=(1.0, 2.0, 0.5, 1.0)):
    """The global greedy of spec section 3: [(row, score)] in pick order."""
    wc, we, wl, wb = w
    s = wc * t[:, 1] + we * t[:, 0] + wl * t[:, 2] - wb * t[:, 3]
    taken = np.zeros(len(u), bool)
    n_k = {k: int((y == k).sum()) for k in set(y.tolist())}
    count = {k: 0 for k in n_k}
    new = {k: [] for k in n_k}
    sel = {k: [] for k in n_k}
    picks = []
    while len(picks) < budget:
        cand = np.where(taken, -np.inf, s)
        i = int(np.argmax(cand))  # ties: the smallest index
        picks.append((i, float(s[i])))
        taken[i] = True
        k = int(y[i])
        count[k] += 1
        new[k].append(i)
        sel[k].append(i)
        if count[k] % refresh == 0:
            members = np.flatnonzero((y == k) & ~taken)
            J = np.array(new[k])
            red = phi(u[members] @ v[J].T, tau).sum(1) + phi(v[members] @ u[J].T, tau).sum(1)
            s[members] -= wc * red / n_k[k]
            s[members] -= (wc * t[sel[k], 1].sum() + wl * t[new[k], 2].sum()) / n_k[k]
            new[k] = []
    return picks
