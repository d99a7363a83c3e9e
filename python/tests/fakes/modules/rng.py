"""Stand-in for modules/rng.py: ImageRNG draws one noise per seed from a seeded generator
(CPU source), re-seeding with seed + ENSD for later draws."""

import torch

from . import shared


def _generator(seed):
    return torch.Generator("cpu").manual_seed(int(seed))


class ImageRNG:
    def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0):
        self.shape, self.seeds = tuple(shape), list(seeds)
        self.generators = [_generator(s) for s in self.seeds]
        self.is_first = True

    def first(self):
        xs = [torch.randn(self.shape, generator=g) for g in self.generators]
        ensd = shared.opts.eta_noise_seed_delta or 0
        if ensd:
            self.generators = [_generator(s + ensd) for s in self.seeds]
        return torch.stack(xs).to(shared.device)

    def next(self):
        if self.is_first:
            self.is_first = False
            return self.first()
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators]).to(shared.device)
