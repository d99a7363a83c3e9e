"""Stand-in for comfy/model_patcher.py: clones share the torch model, not the wrappers."""


class ModelPatcher:
    def __init__(self, model):
        self.model = model
        self.model_options = {"transformer_options": {}}
        self.wrappers = {}

    def clone(self):
        c = ModelPatcher(self.model)
        c.wrappers = {k: {kk: list(v) for kk, v in d.items()} for k, d in self.wrappers.items()}
        return c

    def add_wrapper_with_key(self, wrapper_type, key, wrapper):
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)
