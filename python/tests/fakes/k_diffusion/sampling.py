"""Stand-in for k_diffusion/sampling.py: Euler and Heun with k-diffusion's order of model calls
and callbacks. Per step i: one model evaluation at σ_i, then ``callback({'x', 'i', 'sigma',
'sigma_hat', 'denoised'})`` with the step's x and x̂₀, then the update; Heun evaluates the model
a second time at σ_{i+1} on the Euler prediction and averages the two slopes, except on the
last step when σ_{i+1} = 0, which is a plain Euler step (one evaluation). No churn (the webui's
defaults: s_churn = 0, so σ̂ = σ)."""

import torch


def to_d(x, sigma, denoised):
    """The ODE slope dx/dσ at (x, σ) given the model's x̂₀."""
    return (x - denoised) / sigma


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    extra_args = extra_args or {}
    ones = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * ones, **extra_args)
        d = to_d(x, sigmas[i], denoised)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None):
    extra_args = extra_args or {}
    ones = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * ones, **extra_args)
        d = to_d(x, sigmas[i], denoised)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt  # the last step: Euler, one evaluation
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * ones, **extra_args)
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            x = x + (d + d_2) / 2 * dt
    return x
