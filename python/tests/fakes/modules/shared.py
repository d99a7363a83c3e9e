"""Stand-in for modules/shared.py: options, command-line flags, device, state."""

from types import SimpleNamespace

import torch

opts = SimpleNamespace(
    randn_source="CPU",
    eta_noise_seed_delta=0,
    batch_cond_uncond=True,
    pad_cond_uncond=False,
    cross_attention_optimization="Automatic",
    upcast_attn=False,
)
# Test knob: batch the Forge way ([uncond; cond], rows labelled to the UNet by
# transformer_options["cond_or_uncond"]) instead of the webui's [cond; uncond].
forge_batching = False
cmd_opts = SimpleNamespace(
    xformers=False, opt_sdp_attention=False, opt_split_attention=False, medvram=False, lowvram=False,
    no_half=True, no_half_vae=True, upcast_sampling=False, precision="full",
)
device = torch.device("cpu")
# sampling_step: set by the sampler's k-diffusion callback (sd_samplers.callback_state).
state = SimpleNamespace(interrupted=False, skipped=False, sampling_step=0, sampling_steps=0)
# Test knob: the free memory, in bytes, that sd_hijack_optimizations.get_available_vram reports
# (the webui asks torch.cuda.mem_get_info, or psutil on the CPU): the "card" of the run.
free_memory = 8 << 30
