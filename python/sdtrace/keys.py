"""sdtrace's keys and the module paths of LDM-structured hosts (AUTOMATIC1111, Forge, ComfyUI).

One table, in Rust (``sdtrace_core::ldm``), maps LDM module paths such as
``model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1`` to sdtrace's keys
(``unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1``); ``sdtrace`` reads single-file
checkpoints by the same table, so a host hooks exactly the modules whose weights the
command-line pipeline loads under those keys.

- ``from_ldm(path)`` → the sdtrace key, or ``None`` (a module with no sdtrace counterpart).
  Paths are rooted as in a checkpoint (``model.diffusion_model.…``, ``first_stage_model.…``,
  ``cond_stage_model.…``); ComfyUI's ``diffusion_model.…``, paths inside the UNet
  (``middle_block.1``) and the webui's ``cond_stage_model.wrapped.…`` are taken too.
- ``to_ldm(key)`` → the LDM module path, or ``None``.
- Both use SD 1.x/2.x names unless given ``ldm_map=``: ``LdmMap("sd1")``, ``LdmMap("sd2")``,
  ``LdmMap("sdxl")`` (SDXL base: ``conditioner.embedders.0.transformer.text_model`` is
  ``text_encoder``, ``conditioner.embedders.1.model`` is ``text_encoder_2``, ``label_emb.0`` is
  ``unet.add_embedding``) or ``LdmMap.from_names(names)`` for another model of one of these
  structures (read off its module or weight names; raises ``SdtraceError`` for the SDXL
  refiner, SD3, Flux and the like).
"""

from ._native import LdmMap

_SD = None


def _default():
    global _SD
    if _SD is None:
        _SD = LdmMap("sd")
    return _SD


def from_ldm(path, ldm_map=None):
    """The sdtrace key of LDM module path ``path``, or ``None``."""
    return (ldm_map or _default()).from_ldm(path)


def to_ldm(key, ldm_map=None):
    """The LDM module path of sdtrace key ``key``, or ``None`` (SD 1.x text-encoder paths by
    default)."""
    return (ldm_map or _default()).to_ldm(key)


__all__ = ["LdmMap", "from_ldm", "to_ldm"]
