"""The two scaling laws, their published coefficients, and the compute-optimal plan.

Chinchilla (Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", approach 3):

    L(N, D) = E + A / N^alpha + B / D^beta        N = parameters, D = training tokens

published: E = 1.69, A = 406.4, B = 410.7, alpha = 0.34, beta = 0.28 (loss in nats per token on
MassiveText; N counts all parameters, embeddings included).

Kaplan (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", eqs. 1.1 and 1.2):

    L(N) = (N_c / N)^alpha_N    (converged, data not limiting)   alpha_N = 0.076, N_c = 8.8e13
    L(D) = (D_c / D)^alpha_D    (large model, early stopped)     alpha_D = 0.095, D_c = 5.4e13

(N non-embedding parameters, D tokens, loss in nats on WebText2.)

Compute-optimal plan. With training compute C = 6 N D, minimising L(N, C / (6N)) over N gives
(dL/dN = 0:  alpha A N^-alpha = beta B D^-beta)

    N_opt = G (C/6)^(beta/(alpha+beta)),   D_opt = G^-1 (C/6)^(alpha/(alpha+beta)),
    G = (alpha A / (beta B))^(1/(alpha+beta))

so the optimal tokens per parameter, D_opt / N_opt = G^-2 (C/6)^((alpha-beta)/(alpha+beta)), grows
slowly with C when alpha > beta.
"""
import math
from dataclasses import asdict, dataclass

from ..config import read_config


@dataclass(frozen=True)
class ChinchillaLaw:
    E: float = 1.69
    A: float = 406.4
    B: float = 410.7
    alpha: float = 0.34
    beta: float = 0.28

    def loss(self, N, D):
        return self.E + self.A / N ** self.alpha + self.B / D ** self.beta

    @property
    def G(self):
        a, b = self.alpha, self.beta
        return (a * self.A / (b * self.B)) ** (1.0 / (a + b))

    def optimal(self, C):
        """(N_opt, D_opt) for training compute C = 6 N D (closed form, see the module docstring)."""
        a, b = self.alpha, self.beta
        return self.G * (C / 6.0) ** (b / (a + b)), (C / 6.0) ** (a / (a + b)) / self.G

    def compute_for_params(self, N):
        """The C whose compute-optimal model has N parameters (N_opt(C) inverted)."""
        a, b = self.alpha, self.beta
        return 6.0 * (N / self.G) ** ((a + b) / b)

    def compute_for_tokens(self, D):
        """The C whose compute-optimal run trains on D tokens (D_opt(C) inverted)."""
        a, b = self.alpha, self.beta
        return 6.0 * (D * self.G) ** ((a + b) / a)

    def to_dict(self):
        return asdict(self)


@dataclass(frozen=True)
class KaplanLaw:
    alpha_N: float = 0.076
    N_c: float = 8.8e13
    alpha_D: float = 0.095
    D_c: float = 5.4e13

    def loss_n(self, N):
        return (self.N_c / N) ** self.alpha_N

    def loss_d(self, D):
        return (self.D_c / D) ** self.alpha_D

    def to_dict(self):
        return asdict(self)


PUBLISHED_CHINCHILLA = ChinchillaLaw()
PUBLISHED_KAPLAN = KaplanLaw()


def load_law(spec="published"):
    """The Chinchilla law to plan with: "published" or the path of a fit.json written by the sweep/fit."""
    if spec in (None, "published"):
        return PUBLISHED_CHINCHILLA
    try:
        fit = read_config(spec, "fit")
    except ValueError as error:
        raise ValueError(f"--law: {error}; pass 'published' or a fit.json") from None
    law = fit.get("chinchilla", fit) if isinstance(fit, dict) else None
    law = law.get("law", law) if isinstance(law, dict) else None
    try:
        return ChinchillaLaw(**{k: float(law[k]) for k in ("E", "A", "B", "alpha", "beta")})
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"--law: {spec!r} has no Chinchilla coefficients E, A, B, alpha, beta") from None


def plan(law, flops=None, params=None, tokens=None):
    """The run to train, as a dict {flops, params, tokens, tokens_per_param, loss, ...}.

    flops only:            the compute-optimal N and D for C (closed form).
    params only:           the compute-optimal run for a model of N parameters: the C whose N_opt is N,
                           and D = D_opt(C).  tokens only: likewise for D tokens.
    flops and params (or tokens): that model size (token count) at that budget, D = C / (6N)
                           (N = C / (6D)); `optimal` then names the compute-optimal pair for comparison.
    """
    given = sum(x is not None for x in (flops, params, tokens))
    if given == 0 or given == 3 or (given == 2 and flops is None):
        raise ValueError("plan: give --flops C, or one of --params N / --tokens D, optionally with --flops C")
    for name, x in (("flops", flops), ("params", params), ("tokens", tokens)):
        if x is not None and not (math.isfinite(x) and x > 0):
            raise ValueError(f"plan: --{name} must be a positive number, got {x}")
    if flops is not None and params is None and tokens is None:
        params, tokens = law.optimal(flops)
        mode = "compute-optimal"
    elif flops is not None:
        params = params if params is not None else flops / (6.0 * tokens)
        tokens = tokens if tokens is not None else flops / (6.0 * params)
        mode = "fixed budget"
    elif params is not None:
        flops = law.compute_for_params(params)
        tokens = flops / (6.0 * params)
        mode = "compute-optimal for N"
    else:
        flops = law.compute_for_tokens(tokens)
        params = flops / (6.0 * tokens)
        mode = "compute-optimal for D"
    n_opt, d_opt = law.optimal(flops)
    return {"mode": mode, "flops": flops, "params": params, "tokens": tokens, "tokens_per_param": tokens / params,
            "loss": law.loss(params, tokens), "optimal": {"params": n_opt, "tokens": d_opt,
                                                          "loss": law.loss(n_opt, d_opt)},
            "law": law.to_dict()}
