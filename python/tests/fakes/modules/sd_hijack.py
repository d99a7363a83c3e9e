"""Stand-in for modules/sd_hijack.py: the active optimisation and the loaded embeddings."""

from types import SimpleNamespace

model_hijack = SimpleNamespace(optimization_method="none", embedding_db=SimpleNamespace(word_embeddings={"my-style": object()}))
