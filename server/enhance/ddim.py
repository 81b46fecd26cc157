"""Few-step DDIM sampling in numpy, the same arithmetic as diffusers' DDIMScheduler (eta 0, "trailing"
timestep spacing, final alpha 1, predicting the sample), so the server needs no torch."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def timesteps(steps: int, train_timesteps: int) -> list[int]:
    """Trailing spacing: the first step is always the last training timestep (pure noise)."""
    if not 1 <= steps <= train_timesteps:
        raise ValueError(f"steps must be between 1 and {train_timesteps}, not {steps}")
    return [int(t) for t in np.round(np.arange(train_timesteps, 0, -train_timesteps / steps)).astype(np.int64) - 1]


def step(x0: npt.NDArray[np.float32], t: int, x_t: npt.NDArray[np.float32], alphas_cumprod: npt.NDArray[np.float64],
         steps: int) -> npt.NDArray[np.float32]:
    """x_{t-1} from the model's clean-sample prediction x0 at timestep t."""
    prev = t - len(alphas_cumprod) // steps
    alpha = alphas_cumprod[t]
    alpha_prev = alphas_cumprod[prev] if prev >= 0 else 1.0
    eps = (x_t - np.sqrt(alpha) * x0) / np.sqrt(1 - alpha)
    return (np.sqrt(alpha_prev) * x0 + np.sqrt(1 - alpha_prev) * eps).astype(np.float32)
