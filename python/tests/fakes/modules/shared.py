"""Stand-in for modules/shared.py: options, command-line flags, device, state."""

from types import SimpleNamespace

import torch

opts = SimpleNamespace(
    randn_source="CPU",
    eta_noise_seed_delta=0,
    batch_cond_uncond=True,
    pad_cond_uncond=False,
    cross_attention_optimization="Automatic",
)
cmd_opts = SimpleNamespace(
    xformers=False, opt_sdp_attention=False, opt_split_attention=False, medvram=False, lowvram=False,
    no_half=True, no_half_vae=True, upcast_sampling=False, precision="full",
)
device = torch.device("cpu")
state = SimpleNamespace(interrupted=False, skipped=False)
