"""Stand-in for k_diffusion/external.py: `CompVisDenoiser`, the ε-model wrapper the webui's CFG
denoiser calls (x̂₀ out, σ ↔ timestep by interpolating the model's log σ table)."""

import torch


class CompVisDenoiser:
    def __init__(self, model):
        self.model = model
        ac = model.alphas_cumprod
        self.sigmas = ((1 - ac) / ac) ** 0.5
        self.log_sigmas = self.sigmas.log()

    def sigma_to_t(self, sigma):
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high = low + 1
        lo, hi = self.log_sigmas[low], self.log_sigmas[high]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        return ((1 - w) * low + w * high).view(sigma.shape)

    def get_sigmas(self, n):
        t = torch.linspace(len(self.sigmas) - 1, 0, n)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return torch.cat([((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp(), torch.zeros(1)])

    def __call__(self, x, sigma, cond, labels=None):
        c_in = 1 / (sigma**2 + 1) ** 0.5
        xc, t = x * c_in[:, None, None, None], self.sigma_to_t(sigma).float()
        if labels is None:
            eps = self.model.apply_model(xc, t, cond)
        else:  # Forge's KModel: the labels travel with the call
            eps = self.model.model.diffusion_model(xc, t, context=cond, transformer_options={"cond_or_uncond": labels})
        return x - eps * sigma[:, None, None, None]
