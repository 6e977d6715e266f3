"""RoPE-scaled views of a loaded model through transformers' own rope configuration.

A scaled view is a second model object built from a copy of the config with
``config.rope_parameters`` set to a YaRN / dynamic-NTK / linear (position interpolation) setting.
It shares every parameter tensor with the base model (nothing is copied); only the rotary module,
which transformers builds from the config, is new. transformers >= 5 reads
``rope_parameters = {"rope_type", "rope_theta", "factor", ...}``; yarn also needs
``original_max_position_embeddings`` (the pretrained window).
"""

from __future__ import annotations

import copy
import logging

import torch

logger = logging.getLogger(__name__)

ROPE_TYPES = {"yarn": "yarn", "ntk": "dynamic", "dynamic": "dynamic", "linear": "linear"}


def rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ValueError(f"cannot find rope_theta in the config of {config.model_type!r}")
    return float(theta)


def scaled_config(config, kind: str, factor: float):
    """A copy of ``config`` with RoPE scaling ``kind`` ("yarn", "ntk"/"dynamic", "linear") by ``factor``.

    yarn and linear raise ``max_position_embeddings`` to window * factor (the scaled window); dynamic
    NTK keeps it, because transformers' dynamic rule reads it as the pretrained window.
    """
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope scaling must be one of {sorted(ROPE_TYPES)}, got {kind!r}")
    if not factor >= 1.0:
        raise ValueError(f"rope scaling factor must be >= 1, got {factor}")
    window = int(config.max_position_embeddings)
    new = copy.deepcopy(config)
    params = {"rope_type": ROPE_TYPES[kind], "rope_theta": rope_theta(config), "factor": float(factor)}
    if params["rope_type"] == "yarn":
        params["original_max_position_embeddings"] = window
    if params["rope_type"] in ("yarn", "linear"):
        new.max_position_embeddings = int(round(window * factor))
    new.rope_parameters = params
    return new


def scaled_model(model, kind: str, factor: float):
    """A model that shares ``model``'s weights but uses RoPE scaling ``kind`` by ``factor``.

    The new object is built on the meta device (no allocation), every parameter and persistent
    buffer is assigned from the base model (the same tensors), and the rotary module is rebuilt
    from the scaled config on the base model's device.
    """
    config = scaled_config(model.config, kind, factor)
    config._attn_implementation = model.config._attn_implementation
    with torch.device("meta"):
        clone = type(model)(config)
    clone.load_state_dict(model.state_dict(keep_vars=True), assign=True, strict=True)
    base_rotary = model.model.rotary_emb
    device = base_rotary.inv_freq.device
    clone.model.rotary_emb = type(base_rotary)(config=config).to(device)
    leftover = [name for name, t in [*clone.named_parameters(), *clone.named_buffers()] if t.is_meta]
    if leftover:
        raise ValueError(f"could not share weights into the rope-scaled model; still on meta: {leftover[:5]}")
    clone.generation_config = model.generation_config
    clone.eval()
    logger.debug("rope-scaled view: %s", config.rope_parameters)
    return clone
