"""Routing between a small and a large model: a confidence cascade, or a learned router.

Cascade: answer with the small model; when its mean token log-probability, (1/n) sum_t log p(y_t),
is under `threshold`, answer again with the large one (the small answer's cost is spent either way).

Learned router (as RouteLLM does): a logistic classifier on the prompt's embedding x (the mean of
its token embeddings in the small model), p(large | x) = sigmoid(w . z + b) with z the standardised
x, trained from logged outcomes (y = 1 where the small model's answer was wrong) by gradient descent
on the L2-regularised log loss. The threshold is calibrated to a target share of large-model calls:
the (1 - share) quantile of p over a sample of prompts, so that share of them goes to the large model.
"""
import json

import numpy as np

from ..files import write_json


def mean_logprob(request):
    """The mean log-probability of a finished request's tokens (0 for none)."""
    lps = [o.logprob for o in request.outputs]
    return float(np.mean(lps)) if lps else 0.0


class Cascade:
    def __init__(self, threshold=-1.0):
        self.threshold = float(threshold)

    def escalate(self, small_request):
        return mean_logprob(small_request) < self.threshold


class LogisticRouter:
    def __init__(self, w=None, b=0.0, mean=None, std=None, threshold=0.5):
        self.w, self.b, self.mean, self.std, self.threshold = w, float(b), mean, std, float(threshold)

    def fit(self, X, y, l2=1e-2, steps=500, lr=0.5):
        """Fit to embeddings X (n, D) and outcomes y (n,) in {0, 1} (1: the large model is needed)."""
        X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
        if X.ndim != 2 or len(X) != len(y) or len(X) < 2:
            raise ValueError(f"LogisticRouter.fit: X must be (n >= 2, D) and y (n,), got {X.shape} and {y.shape}")
        self.mean, self.std = X.mean(axis=0), X.std(axis=0) + 1e-8
        Z = (X - self.mean) / self.std
        self.w, self.b = np.zeros(X.shape[1]), 0.0
        for _ in range(steps):                       # d/dw mean(log loss) = Z^T (p - y) / n
            p = self._sigmoid(Z @ self.w + self.b)
            self.w -= lr * (Z.T @ (p - y) / len(y) + l2 * self.w)
            self.b -= lr * float(np.mean(p - y))
        return self

    @staticmethod
    def _sigmoid(t):
        return 1.0 / (1.0 + np.exp(-np.clip(t, -60, 60)))

    def prob(self, X):
        """p(large model needed) for embeddings X (n, D) or one (D,)."""
        if self.w is None:
            raise ValueError("LogisticRouter: fit it (or load a fitted one) first")
        Z = (np.asarray(X, np.float64) - self.mean) / self.std
        return self._sigmoid(Z @ self.w + self.b)

    def calibrate(self, X, share):
        """Set the threshold so that `share` of the prompts X go to the large model."""
        if not 0 <= share <= 1:
            raise ValueError(f"LogisticRouter.calibrate: share must be in [0, 1], got {share}")
        self.threshold = float(np.quantile(self.prob(X), 1 - share)) if share < 1 else -np.inf
        return self

    def use_large(self, x):
        return bool(self.prob(x) > self.threshold)

    def save(self, path):
        write_json(path, {"w": self.w.tolist(), "b": self.b, "mean": self.mean.tolist(), "std": self.std.tolist(),
                          "threshold": self.threshold})

    @classmethod
    def load(cls, path):
        with open(path) as f:
            d = json.load(f)
        try:
            return cls(np.array(d["w"]), d["b"], np.array(d["mean"]), np.array(d["std"]), d["threshold"])
        except (KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a router file (w, b, mean, std, threshold): {error}") from None
