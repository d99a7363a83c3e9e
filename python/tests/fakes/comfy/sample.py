"""Stand-in for comfy/sample.py: noise from the global CPU generator, one draw per batch."""

import torch


def prepare_noise(latent_image, seed):
    generator = torch.manual_seed(seed)
    return torch.randn(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout, generator=generator, device="cpu")
