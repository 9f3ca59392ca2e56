"""Derived defaults: step sizes and other hyper-parameters from the problem's constants and the
compressor (issue 12; docs/defaults.md; the formulas and the measured matrix are in
docs/defaults.md).

A hyper-parameter whose default is derived has default None and ``json_schema_extra={"derived":
rule}`` in its schema. ``resolve_hyper`` (called by ``runner.resolve``, where config.json's values
are decided) fills every such field the user left unset, in three stages:

1. Problem constants (``problem_constants``): ``Problem.constants()`` if the task knows them in
   closed form (the quadratic), else estimated by ``estimate_constants``: Lanczos on the mean
   H_yy over all workers (L_g, mu_g) and power iterations on every single worker at once
   (L_g,max = max_i L_g,i), at (x0, y0) and after each of a few lower-level gradient steps (the
   largest seen), and a power iteration on the mean f's H_xx (L_f_xx), on one batch per worker
   drawn from the seed, in float64 when the problem's losses accept it and with one torch thread,
   so every process of a ``--procs`` run derives the same numbers.
2. Base steps of an uncompressed single step: beta0 = gamma0 = C_Y / L_g, alpha0 = C_X / L_Phi
   (L_Phi known) or C_X / max(L_g, L_f_xx);
   a task's ``defaults`` dict may replace these base values (measured overrides, documented there).
3. Scaling: per variable dimension d, by the compressor (``compressor_factor``: DIANA
   1 / (1 + C_OMEGA omega / n) for an unbiased C, EF21 1 / (1 + sqrt(b / t)) for a contractive
   one), and by local steps (tau * beta * L_g,max <= C_LOCAL).

Every number is rounded to 4 significant digits. A value the user sets is used as it is.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable

import torch
from torch.func import grad, vjp, vmap
from torch.utils._pytree import tree_map

from . import budgets, rng
from .compressors import Compressor, Sign, TopK, make_compressor, multi_step
from .compressors.multistep import MultiStep
from .hypergrad import phi_curvature
from .oracles import Oracles
from .problems.base import Problem

Tensor = torch.Tensor

POWER_STEPS = 20  # power iterations per estimate
PROBE_STEPS = 5  # lower-level gradient steps, the estimate repeated after each
C_Y = 1.0  # beta0 = gamma0 = C_Y / L_g
C_X = 0.5  # alpha0 = C_X / L_Phi (L_Phi known in closed form)
C_X_EST = 0.1  # alpha0 = max(C_X / max(L_g, L_f_xx), C_X_EST / L_Phi estimated at the horizon)
C_OMEGA = 1.0  # unbiased compressors: steps / (1 + C_OMEGA omega / n)
C_LOCAL = 1.0  # local steps: tau * beta * L_g,max <= C_LOCAL
C_AVERAGE = 2.0  # moving average theta < 1: alpha x min(1, C_AVERAGE theta)
C_OWN = 0.5  # LFedNest's Neumann step on each client's own Hessian: C_OWN / L_g,max
C_GLOBAL = 0.5  # FedNest's Neumann step on the clients' mean Hessian: C_GLOBAL / L_g
_KEY = 0xDEFA  # random stream of the estimation (batches, start vectors)


def derived(rule: str) -> dict[str, str]:
    """``json_schema_extra`` of a hyper-parameter whose default is derived by this module."""
    return {"derived": rule}


@contextlib.contextmanager
def one_thread():
    """One torch thread (one op order: every process derives the same numbers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def round_sig(v: float, digits: int = 4) -> float:
    return float(f"{v:.{digits - 1}e}")


# ----- 1. problem constants -----
def estimate_constants(problem: Problem, seed: int, steps: int = POWER_STEPS) -> dict[str, Any]:
    """L_g, mu_g (mean over workers) and L_g,max (largest single worker) from ``steps`` products
    H_yy v on one g-batch per worker drawn from ``seed``: at (x0, y0) and at the points of a short
    lower-level descent from there (``along_descent``); the largest curvature seen is kept."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # one op order: every process derives the same numbers
    try:
        try:
            return along_descent(problem, seed, steps, torch.float64)
        except (RuntimeError, TypeError):  # losses hold data of the problem's dtype only
            return along_descent(problem, seed, steps, problem.dtype)
    finally:
        torch.set_num_threads(before)


def along_descent(problem: Problem, seed: int, steps: int, dtype: torch.dtype) -> dict[str, Any]:
    """The constants at (x0, y0) and after each of PROBE_STEPS stochastic gradient steps
    y <- y - grad_y g(x0, y) / L_g (a fresh g-batch per step; L_g: the largest seen so far), all
    measured on the same batch: L_g and L_g,max are the largest seen, mu_g the smallest. The
    curvature at the start can understate the run's: a softmax head started at y0 = 0 is at its
    flattest there (measured: hyperclean's L_g doubles within 3 steps, docs/defaults.md)."""
    n = problem.n_workers
    x0, y = (t.to(dtype) for t in problem.init(seed))
    batch = problem.sample("g", torch.arange(n), rng.key(seed, _KEY))
    grad_y = vmap(grad(problem.g, argnums=1), in_dims=(None, None, 0))
    out = _estimate(problem, x0, y, batch, seed, steps, dtype)
    for k in range(PROBE_STEPS):
        fresh = problem.sample("g", torch.arange(n), rng.key(seed, _KEY, 10 + k))
        y = y - grad_y(x0, y, fresh).mean(0) / out["L_g"]
        if not bool(torch.isfinite(y).all()):
            break
        at = _estimate(problem, x0, y, batch, seed, steps, dtype)
        out = {"L_g": max(out["L_g"], at["L_g"]), "mu_g": min(out["mu_g"], at["mu_g"]),
               "L_g_max": max(out["L_g_max"], at["L_g_max"]), "lanczos": max(out["lanczos"], at["lanczos"])}
    out["L_f_xx"] = upper_curvature(problem, x0, y, seed, steps)
    name = "float64" if dtype == torch.float64 else str(dtype).removeprefix("torch.")
    m = out.pop("lanczos")
    return {**out, "source": f"{m} Lanczos and {steps} power-iteration steps of H_yy v at (x0, y0) and after "
                             f"each of {PROBE_STEPS} lower-level gradient steps (largest seen); L_f_xx: "
                             f"{steps} power-iteration steps of the mean f's H_xx there, {name}"}


def upper_curvature(problem: Problem, x: Tensor, y: Tensor, seed: int, steps: int) -> float:
    """|largest eigenvalue| of the workers' mean H_xx of f at (x, y) by power iteration, on one
    f-batch per worker: the scale of x's own curvature, which stands in for L_Phi where that is
    unknown (measured 4.6 against L_Phi = 5.8 on the quadratic; 8.3 against L_g = 0.72 on a small
    hyperrep, where a step of 0.5 / L_g diverged every single-loop method, docs/defaults.md)."""
    n = problem.n_workers
    batch = problem.sample("f", torch.arange(n), rng.key(seed, _KEY, 2))

    def mean_hvp(u: Tensor) -> Tensor:
        def one(b):
            return vjp(lambda x_: grad(problem.f, argnums=0)(x_, y, b), x)[1](u)[0]
        return vmap(one)(batch).mean(0)

    q = rng.normal(rng.key(seed, _KEY, 4), (problem.d_x,), x.dtype)
    q, lam = q / q.norm(), 0.0
    for _ in range(steps):
        h = mean_hvp(q)
        lam, norm = float(q @ h), float(h.norm())
        if not norm > 0:
            return 0.0
        q = h / norm
    return abs(lam)


def _hvp_yy(loss: Callable, x: Tensor, y: Tensor, V: Tensor, batch: Any) -> Tensor:
    """Rows H_yy,i V_i (a vjp of grad_y in y only: no d_x-sized product H_xy v)."""
    def one(v, b):
        return vjp(lambda y_: grad(loss, argnums=1)(x, y_, b), y)[1](v)[0]
    return vmap(one)(V, batch)


def _estimate(problem: Problem, x0: Tensor, y0: Tensor, batch: Any, seed: int, steps: int,
              dtype: torch.dtype) -> dict[str, Any]:
    """At (x0, y0): Lanczos (full re-orthogonalisation) on the workers' mean H_yy for L_g and mu_g,
    and, in the same oracle call per step, power iteration on every worker's own H_yy,i for L_g,max."""
    n, d = problem.n_workers, problem.d_y
    twice = tree_map(lambda t: torch.cat([t, t]), batch)  # rows 0..n-1: own vectors, n..2n-1: mean's
    q = rng.normal(rng.key(seed, _KEY, 1), (d,), dtype)
    q = q / q.norm()
    V = q.expand(n, d).clone()
    Q, alphas, betas, prev, b = [], [], [], torch.zeros_like(q), 0.0
    lanczos = True  # until d steps or a breakdown (then only the workers' power iteration goes on)
    for _ in range(steps):
        H = (_hvp_yy(problem.g, x0, y0, torch.cat([V, q.expand(n, d)]), twice) if lanczos
             else _hvp_yy(problem.g, x0, y0, V, batch))
        own = H[:n]
        rayleigh = (V * own).sum(-1).double()
        V = own / own.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        if not lanczos:
            continue
        w = H[n:].mean(0)
        a = float(q @ w)
        Q.append(q)
        alphas.append(a)
        w = w - a * q - b * prev
        for u in Q:  # full re-orthogonalisation
            w = w - (u @ w) * u
        b = float(w.norm())
        lanczos = len(alphas) < d and b > 1e-10 * max(abs(a), 1e-300)
        if lanczos:
            betas.append(b)
            prev, q = q, w / b
    m = len(alphas)
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(betas[: m - 1], dtype=torch.float64)
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    ritz = torch.linalg.eigvalsh(T)
    return {"L_g": float(ritz[-1]), "mu_g": max(float(ritz[0]), 0.0), "L_g_max": float(rayleigh.max()),
            "lanczos": m}


def problem_constants(problem: Problem, seed: int) -> dict[str, Any]:
    """The task's own constants (``Problem.constants()``), else the estimates at (x0, y0)."""
    known = problem.constants()
    if known is not None:
        return {**known, "source": known.get("source", "closed form")}
    return estimate_constants(problem, seed)


def horizon_curvature(problem: Problem, seed: int, L_g: float, horizon: int) -> dict[str, Any]:
    """Phi's curvature at x0 as a run of ``horizon`` lower-level rounds sees it (hypergrad.py):
    the lower level and v are solved with L_g / horizon / 2 ||y - y0||^2 added to g, the
    resolution of ``horizon`` gradient steps of 1 / L_g from y0. The exact lower level's curvature
    holds directions a run never resolves: on hyperrep (mu_g = 1e-3) Phi's is 15.3 exactly, 1.5 at
    100 rounds, where a step of 0.5 / 1.5 reaches 0.91 test accuracy (docs/defaults.md)."""
    ridge = L_g / max(1, horizon)
    out = phi_curvature(problem, seed, ridge)
    return {"L_phi": out["L_phi"], "L_phi_source": (
        f"{out['power_steps']} power-iteration steps on finite differences of grad Phi at x0 (step "
        f"{round_sig(out['fd_step'])}), lower level and v solved with ridge L_g/{max(1, horizon)} on "
        f"{out['draws_per_worker'][0]} f- and {out['draws_per_worker'][1]} g-batches per worker: "
        f"{out['lower_grad_calls']} gradients of g, {out['cg_products']} Hessian products"),
        "L_phi_seconds": round(out["seconds"], 2), "hypergrad_norm_x0": out["hypergrad_norm_x0"]}


def start_directions(problem: Problem, seed: int) -> dict[str, Tensor]:
    """The workers' SOBA directions at (x0, y0) on one batch pair drawn from ``seed``, rows [n, d]:
    D_y = grad_y g_i, D_v = -grad_y f_i at v = 0, and D_x = grad_x f_i - H_xy,i v at v = mean_i
    grad_y f_i (at v = 0 D_x may vanish: hyper-cleaning's f does not depend on x)."""
    o, workers = Oracles(problem), torch.arange(problem.n_workers)
    x0, y0 = problem.init(seed)
    bf = problem.sample("f", workers, rng.key(seed, _KEY, 2))
    bg = problem.sample("g", workers, rng.key(seed, _KEY, 3))
    gx, gy = o.grad_f(x0, y0, bf)
    d_y, hxy_v, _ = o.grad_y_hvp_g(x0, y0, gy.mean(0), bg)
    return {"x": gx - hxy_v, "y": d_y, "v": -gy}


def spread(rows: Tensor) -> float:
    """mean_i ||D_i||^2 / ||mean_i D_i||^2 of the rows [n, d] (1 for identical workers), at most n:
    the factor by which workers' own directions outweigh their mean. Capped at n, the level at
    which the compressed mean is as noisy as one worker's compressed direction alone: a mean near
    zero (the weight decay's D_x at the start) made it infinite and x's step zero."""
    rows = rows.double()
    n, mean = rows.shape[0], rows.mean(0)
    own = float((rows * rows).sum(-1).mean())
    return min(own / float(mean @ mean), float(n)) if float(mean @ mean) > 0 else float(n)


def measured_contraction(c: Compressor, rows: Tensor) -> float:
    """The smallest 1 - ||C(u) - u||^2 / ||u||^2 over the non-zero rows u: a deterministic
    contractive compressor's contraction on them (scaled sign: ||u||_1^2 / (d ||u||^2); top-K: the
    K largest coordinates' share of ||u||^2). Their worst cases, 1/d and K/d, hold for 1-sparse
    and for flat vectors only; 1/d if every row is zero."""
    rows = rows.double()
    sq = (rows * rows).sum(-1)
    keep = sq > 0
    if not bool(keep.any()):
        return 1.0 / rows.shape[-1]
    u = rows[keep]
    err = ((c(u, torch.zeros(u.shape[0], dtype=torch.int64)) - u) ** 2).sum(-1)
    return float((1.0 - err / sq[keep]).min())


# ----- 2./3. compressor factors -----
def contraction(c: Compressor, d: int, measured: float | None = None) -> float:
    """delta of a contractive compressor (``measured`` on the start directions, when given, floored
    at the worst case), or of C/(1+omega) for an unbiased one; multi-step: 1 - (1 - delta)^R."""
    if isinstance(c, MultiStep):
        return 1.0 - (1.0 - contraction(c.inner, d, measured)) ** c.steps
    if c.kind == "exact":
        return 1.0
    if c.kind == "contractive" and measured is not None:
        return max(measured, c.delta(d))
    return c.delta(d)


def ef21_factor(delta: float) -> float:
    """EF21's step 1 / (L + L sqrt(b / t)), t = 1 - sqrt(1 - delta), b = (1 - delta) / t, times L."""
    if delta >= 1.0:
        return 1.0
    t = 1.0 - math.sqrt(1.0 - delta)
    return 1.0 / (1.0 + math.sqrt((1.0 - delta) / t / t))


def compressor_factor(c: Compressor, d: int, n: int, measured: float | None = None,
                      spread: float = 1.0, share: float = 1.0) -> float:
    """How much a compressor shrinks a step on a d-dimensional variable averaged over n workers.
    ``spread`` (unbiased C without shifts): mean_i ||D_i||^2 / ||D||^2, by which the variance
    omega/n mean_i ||D_i||^2 of the compressed mean exceeds omega/n ||D||^2. ``share``: the part
    of that variance left in the step (a moving average of weight theta keeps theta / (2 - theta))."""
    if c.kind == "exact":
        return 1.0
    if c.kind == "unbiased":
        return 1.0 / (1.0 + C_OMEGA * c.omega(d) * spread * share / n)
    # the geometric mean of EF21's worst-case step and the uncompressed one: EF21's own factor is
    # stable but measured 7x slower to 1e-2 on the quadratic (top-K 10%: 0.051; 1 is stable there)
    return math.sqrt(ef21_factor(contraction(c, d, measured)))


def measurable(c: Compressor) -> Compressor | None:
    """The deterministic contractive compressor (sign, top-K) whose contraction is measured on the
    start directions (a multi-step compressor's inner one), else None."""
    inner = c.inner if isinstance(c, MultiStep) else c
    return inner if isinstance(inner, (Sign, TopK)) else None


# ----- the rules -----
class Derivation:
    """Inputs of every rule: constants, compressor, dimensions, the task's base overrides."""

    def __init__(self, problem: Problem, compressor: Compressor, constants: dict[str, Any],
                 base: dict[str, Any], n: int, seed: int = 0):
        self.p, self.c, self.k, self.base, self.n = problem, compressor, constants, base, n  # n: senders
        L = constants["L_g"]
        self.L, self.L_max = L, constants.get("L_g_max", L)
        # x on a slower time scale than y; max(L_g, L_f_xx) stands for L_Phi where that is unknown (a
        # kappa-based ratio stalls x: 0.5 mu_g / L_g^2 = 3e-5 on hyperrep, where 0.1 is measured to work)
        L_fxx = constants.get("L_f_xx", 0.0)
        if constants.get("L_phi_source"):  # estimated at the run's horizon (horizon_curvature): it
            # raises the step where Phi is flatter than g, never lowers it below the former rule
            # (the estimate overstated a CNN's curvature 4x: docs/defaults.md)
            curv = max(constants["L_phi"], L_fxx)
            self.alpha0 = max(C_X / max(L, L_fxx), C_X_EST / curv if curv > 0 else 0.0)
            # the curvature-limited step, which compression and averaging shrink (x_step)
            self.alpha_limit = max(self.alpha0, C_X / curv if curv > 0 else 0.0)
        else:
            self.alpha0 = C_X / (constants.get("L_phi") or max(L, L_fxx))
            self.alpha_limit = self.alpha0
        self.beta0 = C_Y / L
        self.delta: dict[int, float] = {}  # d -> sign's / top-K's contraction on the start directions
        self.spread: dict[int, float] = {}  # d -> the workers' spread on the start directions
        self.seed, self.extra = seed, {}  # extra: what a rule measured, for config.json's "derived"
        self._probe: budgets.SeriesProbe | None = None

    def probe(self) -> budgets.SeriesProbe:
        """The start hypergradient's series-truncation probe (made once)."""
        if self._probe is None:
            self._probe = budgets.SeriesProbe(self.p, self.seed)
        return self._probe

    def x_step(self, factor: float) -> float:
        """x's step under a compressor / averaging ``factor``: the factor on the curvature-limited
        step, and at most its square root on the base step. Compression noise and error-feedback lag
        matter against Phi's curvature, so a base step below the limit needs less of the factor
        (the full factor left EF-SOBA top-K 10% and CM-SOBA rand-K 10% 2.5 and 9.8 points below
        their best scale on hyperrep); none of it diverged EF-SOBA top-K on the weight decay of
        examples/ (its y-steps, fixed at the start's L_g, meet the curvature a growing decay makes;
        docs/defaults.md). On the quadratic (closed-form L_phi) the limit is the base: factor x base."""
        base = self.base_step("alpha")
        limit = base if "alpha" in self.base else max(base, self.alpha_limit)
        return min(base * math.sqrt(factor), factor * limit)

    def base_step(self, name: str) -> float:
        if name in self.base:
            return float(self.base[name])
        return self.alpha0 if name == "alpha" else self.beta0

    def measure(self, seed: int, contractive: Compressor | None, spreads: bool) -> None:
        """A contractive compressor's contraction (the smallest) and the workers' spread (the
        largest) per dimension, on the start directions: x on D_x, y on D_y and D_v (one dict entry
        when d_x = d_y)."""
        D = start_directions(self.p, seed)
        by_dim: dict[int, list[Tensor]] = {}
        for name, rows in D.items():
            by_dim.setdefault(self.p.d_x if name == "x" else self.p.d_y, []).append(rows)
        if contractive is not None:
            self.delta = {d: min(measured_contraction(contractive, r) for r in rs) for d, rs in by_dim.items()}
        if spreads:
            self.spread = {d: max(spread(r) for r in rs) for d, rs in by_dim.items()}

    def factor(self, c: Compressor, d: int, share: float = 1.0) -> float:
        return compressor_factor(c, d, self.n, self.delta.get(d), self.spread.get(d, 1.0), share)


def _single_loop(dv: Derivation, hp: Any, compressor: Compressor) -> dict[str, float]:
    """SOBA family: base steps scaled by the compressor on each variable's dimension (without
    error-feedback shifts an unbiased C's variance grows with the workers' spread, which does not
    vanish at the solution: C-SOBA rand-K 10% wandered 1.7-4.7 about its start 4.36 without it,
    0.75-2.8 with it, docs/defaults.md); a moving
    average (theta < 1) delays x's feedback by ~1/theta rounds, so alpha also shrinks by
    min(1, C_AVERAGE theta) (the deterministic iteration is unstable without it: docs/defaults.md);
    the same average keeps only theta / (2 - theta) of an unbiased compressor's variance in x's
    direction, so x's compressor factor counts only that share."""
    theta = getattr(hp, "theta", 1.0)
    fx, fy = dv.factor(compressor, dv.p.d_x, theta / (2.0 - theta)), dv.factor(compressor, dv.p.d_y)
    fx *= min(1.0, C_AVERAGE * theta)
    out = {"alpha": dv.x_step(fx), "beta": dv.base_step("beta") * fy,
           "gamma": dv.base_step("gamma") * fy}
    if "rho" in type(hp).model_fields:  # one number for all variables: the smallest
        out["rho"] = min(shift_step(compressor, d) for d in (dv.p.d_x, dv.p.d_y))
    return out


def shift_step(c: Compressor, d: int) -> float:
    """EF shift step: 1 for an exact or contractive C (EF21), 1/(1+omega) for an unbiased C (DIANA)."""
    return 1.0 / (1.0 + c.omega(d)) if c.kind == "unbiased" else 1.0


def _msc(dv: Derivation, hp: Any, compressor: Compressor) -> dict[str, float]:
    return _single_loop(dv, hp, multi_step(compressor, hp.msc_steps))


def _pruned(dv: Derivation, hp: Any, compressor: Compressor) -> dict[str, Any]:
    """RABO / RAFBO: clients step on their own g_i, T times per round: beta L_g,max T <= C_LOCAL;
    the up-link compressor scales the steps as for C-SOBA (unbiased: no shifts, so the spread
    counts; contractive: per-client error feedback, the EF21-based factor).
    With T > 1 the steps decay as 1/sqrt(k+1): a constant step leaves a client-drift neighbourhood
    proportional to it (RAFBO on the quadratic settled at 0.08 of its start, 0.01 at 1/8 of the
    steps; decaying: 2.2e-3 at round 1500, docs/defaults.md)."""
    T = getattr(hp, "local_steps", 1)
    cap = C_LOCAL / (T * dv.L_max)
    fx, fy = dv.factor(compressor, dv.p.d_x), dv.factor(compressor, dv.p.d_y)
    return {"alpha": dv.x_step(fx / T), "beta": min(dv.base_step("beta"), cap) * fy,
            "gamma": min(dv.base_step("gamma"), cap) * fy, "schedule": "sqrt" if T > 1 else "constant"}


def hypergradient_messages(hp: Any) -> int:
    """Compressed messages a federated hypergradient passes through: FedNest b, N Neumann products
    and h; AggITD v^N, N - 1 backward rounds and h; LFedNest h."""
    fields = type(hp).model_fields
    if "inner" in fields:
        return hp.neumann_terms + 2
    return 1 if "neumann_terms" in fields else hp.inner_rounds + 1


def _federated(dv: Derivation, hp: Any, compressor: Compressor) -> dict[str, Any]:
    """AggITD / FedNest / LFedNest: local steps from the workers' noise and drift, their step
    capped by drift, the backward / Neumann series long enough to miss at most C_SERIES of the
    start hypergradient (distbo/budgets.py), every message compressed; each compressed message on
    the hypergradient's way adds its variance omega / n, so alpha shrinks with all of them (an
    unbiased C; a contractive one: EF21's factor, once). A value the user set is used in the
    rules after it (beta's cap takes the user's tau, N the user's beta or eta)."""
    # the lower level's steps keep the DIANA factor; the workers' spread shrinks alpha only (below)
    fx, fy = dv.factor(compressor, dv.p.d_x), compressor_factor(compressor, dv.p.d_y, dv.n, dv.delta.get(dv.p.d_y))
    out: dict[str, Any] = {}
    fields = type(hp).model_fields
    mine = lambda k: getattr(hp, k) if getattr(hp, k) is not None else out[k]  # noqa: E731
    if hp.local_steps is None:
        sigma2, zeta2 = budgets.noise_and_drift(dv.p, dv.seed)
        out["local_steps"] = budgets.local_steps(sigma2, zeta2)
        dv.extra.update({"noise_y": round_sig(sigma2), "drift_y": round_sig(zeta2)})
    out["beta"] = min(dv.base_step("beta"), C_LOCAL / (mine("local_steps") * dv.L_max)) * fy
    if "eta" in fields:  # Neumann step: global products (FedNest) or the client's own
        # LFedNest's products are one client's minibatch Hessian, unsmoothed by the mean over
        # clients: eta = C_OWN / L_g,max (at 1 / L_g,max it diverged at outer iteration 12 on
        # hyperrep with shards:2 label skew; docs/defaults.md)
        # FedNest's global products: C_GLOBAL / L_g, the curvature grows as a representation x learns
        # (the CNN of examples/module_problem.py: at 1 / L_g ||x|| reached 2e18 at outer iteration 8,
        # at 0.5 / L_g it learns; docs/defaults.md)
        eta = C_OWN / dv.L_max if "inner" not in fields else C_GLOBAL / dv.L
        out["eta"] = dv.base.get("eta", eta) * fy
    omega = max(compressor.omega(dv.p.d_x), compressor.omega(dv.p.d_y)) if compressor.kind == "unbiased" else 0.0
    series = "neumann_terms" if "eta" in fields else "inner_rounds"
    if getattr(hp, series) is None:
        tau = 1 if series == "neumann_terms" else mine("local_steps")  # products per round
        own = series == "neumann_terms" and "inner" not in fields  # LFedNest: each client's own series
        out[series] = _series_length(dv, mine("eta" if series == "neumann_terms" else "beta"), tau, omega,
                                     series == "neumann_terms", own)
    if compressor.kind == "unbiased":
        m = hypergradient_messages(hp.model_copy(update={k: mine(k) for k in out}))
        fx = 1.0 / (1.0 + C_OMEGA * m * omega * max(dv.spread.values(), default=1.0) / dv.n)
    out["alpha"] = dv.x_step(fx)
    return out


def _series_length(dv: Derivation, step: float, tau: int, omega: float, neumann: bool, own: bool) -> int:
    """AggITD's N (``tau`` products of ``step`` per round) or FedNest's Neumann N (N + 1
    products): long enough to miss at most C_SERIES of the start hypergradient
    (distbo/budgets.py), or the fixed budget (recorded why) where that does not pay. ``own``
    (LFedNest): the clients' own series converge to mean_i H_xy,i H_i^-1 b_i, not to the global
    H_xy H^-1 b, so the global probe does not bound them; longer measured worse (the quadratic,
    200 outer iterations: N = 10 ends at 1.5, N = 34 at 2.69): the fixed budget."""
    fixed = budgets.FALLBACK_TERMS if neumann else budgets.FALLBACK_ROUNDS
    if own:
        dv.extra["series_note"] = "lfednest: the clients' own Neumann series; the fixed budget is kept"
        return fixed
    if omega > dv.n:
        # every compressed message adds omega / n of variance: above 1, a longer series costs more in
        # noise than it gains in bias (AggITD rand-K 10% on the quadratic, 200 outer iterations:
        # N = 5, 10, 37 end at 2.45, 2.94, 3.49; docs/defaults.md)
        dv.extra["series_note"] = f"omega {omega:.3g} > n = {dv.n}: the fixed budget is kept"
        return fixed
    probe = dv.probe()
    K = probe.terms(step)
    if K is None:
        dv.extra["series_note"] = (f"{budgets.K_MAX} products miss {probe.error(budgets.K_MAX, step):.2g} of the "
                                   "start hypergradient (mu_g-limited directions): the fixed budget is kept")
        N = fixed
    else:
        N = max(0, K - 1) if neumann else max(1, min(budgets.N_MAX, math.ceil(K / tau)))
    dv.extra.update({"series_error": round_sig(probe.error(N + 1 if neumann else N * tau, step)),
                     "series_target": budgets.C_SERIES, "series_source": f"{probe.source}, {probe.products} products"})
    return N


SHIFT_FREE = ("c-soba", "cm-soba", "rabo", "rafbo")  # methods whose unbiased compression has no shifts
# methods whose messages (local-step deltas, Neumann products, backward vectors) are not the SOBA
# directions on which top-K's share is measured: they keep top-K's worst case K/d (a conservative
# choice; with up-link error feedback every federated top-K pair ends well below its start at it,
# docs/defaults.md); scaled sign keeps its measured contraction, whose worst case 1/d would stall them
FEDERATED = ("aggitd", "fednest", "lfednest")
RULES: dict[str, Callable[[Derivation, Any, Compressor], dict[str, float]]] = {
    "soba": _single_loop, "c-soba": _single_loop, "cm-soba": _single_loop, "ef-soba": _single_loop,
    "cm-soba-msc": _msc, "ef-soba-msc": _msc, "rabo": _pruned, "rafbo": _pruned,
    "aggitd": _federated, "fednest": _federated, "lfednest": _federated,
}


def lower_steps(hp: Any) -> int:
    """Lower-level gradient steps per round (federated: per outer iteration)."""
    return max(1, int(getattr(hp, "inner_rounds", 1) or 1)) * max(1, int(getattr(hp, "local_steps", 1) or 1))


def derived_fields(params: type) -> list[str]:
    return [k for k, f in params.model_fields.items()
            if isinstance(f.json_schema_extra, dict) and "derived" in f.json_schema_extra]


def resolve_hyper(algorithm: str, hp: Any, problem: Problem, compressor: str, seed: int,
                  base: dict[str, Any], fraction: float = 1.0,
                  horizon: int | None = None) -> tuple[Any, dict[str, Any] | None]:
    """Fill the derived hyper-parameters left unset (None) in ``hp``; (new hp, the inputs for
    config.json's "derived" dict, or None if nothing was derived)."""
    todo = [k for k in derived_fields(type(hp)) if getattr(hp, k) is None]
    if not todo:
        return hp, None
    c = make_compressor(compressor)
    consts = problem_constants(problem, seed)
    if "alpha" in todo and "alpha" not in base and not consts.get("L_phi") and horizon is not None:
        consts = {**consts, **horizon_curvature(problem, seed, consts["L_g"], horizon * lower_steps(hp))}
    dv = Derivation(problem, c, consts, base, max(1, round(fraction * problem.n_workers)), seed)
    spreads = algorithm in SHIFT_FREE + FEDERATED and c.kind == "unbiased"
    measured = measurable(c)
    if isinstance(measured, TopK) and algorithm in FEDERATED:
        measured = None  # they send local-step deltas and Neumann products, not the start directions
    if measured is not None or spreads:
        dv.measure(seed, measured, spreads)
    rule = RULES.get(algorithm, _single_loop)  # a new (plugin) algorithm: the SOBA family's rule
    with one_thread():
        values = {k: round_sig(v) if isinstance(v, float) else v for k, v in rule(dv, hp, c).items()
                  if k in todo}
    info = {**{k: (round_sig(v) if isinstance(v, float) and k != "L_phi_seconds" else v)
               for k, v in consts.items()},
            "n": dv.n, "compressor": compressor, "d_x": problem.d_x, "d_y": problem.d_y,
            **_compressor_inputs(c, dv), **dv.extra, "task_base": dict(base), "derived": sorted(values)}
    return hp.model_copy(update=values), info


def _compressor_inputs(c: Compressor, dv: Derivation) -> dict[str, Any]:
    dims = {"x": dv.p.d_x, "y": dv.p.d_y}
    if c.kind == "unbiased":
        return {"omega": {k: round_sig(c.omega(d)) for k, d in dims.items()},
                **({"spread": {k: round_sig(dv.spread[d]) for k, d in dims.items()},
                    "spread_source": "measured on the start directions"} if dv.spread else {})}
    if c.kind == "contractive":
        return {"delta": {k: round_sig(contraction(c, d, dv.delta.get(d))) for k, d in dims.items()},
                **({"delta_source": "measured on the start directions"} if dv.delta else {})}
    return {}
