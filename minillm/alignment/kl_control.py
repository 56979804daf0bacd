"""The KL coefficient beta of the per-token penalty r_t -= beta * (log pi(a_t) - log pi_ref(a_t)).

Fixed, or adaptive as in Ziegler et al. 2019 (and trl's AdaptiveKLController): after each batch of
rollouts whose KL (summed over the answer, averaged over the batch) is KL,

    e     = clip(KL / target - 1, -0.2, 0.2)
    beta *= 1 + e * n_steps / horizon

(n_steps: the rollouts in the batch), so beta rises while the policy drifts past the target and falls
when it stays closer.
"""
import numpy as np


class FixedKLController:
    def __init__(self, kl_coef):
        self.value = float(kl_coef)

    def update(self, current, n_steps):
        return self.value


class AdaptiveKLController:
    def __init__(self, kl_coef, target, horizon):
        if not target > 0 or not horizon > 0:
            raise ValueError(f"AdaptiveKLController: target ({target}) and horizon ({horizon}) must be > 0")
        self.value, self.target, self.horizon = float(kl_coef), float(target), float(horizon)

    def update(self, current, n_steps):
        error = float(np.clip(current / self.target - 1, -0.2, 0.2))
        self.value *= 1 + error * n_steps / self.horizon
        return self.value
