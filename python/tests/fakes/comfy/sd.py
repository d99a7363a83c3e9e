"""Stand-in for comfy/sd.py's VAE: first_stage_model (LDM AutoencoderKL), decode → [B,H,W,C]."""

import torch


class VAE:
    def __init__(self, first_stage_model):
        self.first_stage_model = first_stage_model

    @torch.no_grad()
    def decode(self, samples_in):
        out = self.first_stage_model.decode(samples_in.float())
        return torch.clamp((out + 1.0) / 2.0, min=0.0, max=1.0).movedim(1, -1)
