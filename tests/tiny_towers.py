"""Tiny LanguageBind tower directories, in the released layout, for the tower tests.

The key names and config nesting are written out here by hand from LanguageBind's model and
config classes (not generated from facestream's module), so a loader that drifts from the
released layout fails against them.  Token counts stay real (224 px, patch 14: 257 per frame).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

_ATTN = ("q_proj", "k_proj", "v_proj", "out_proj")


def _vision_shapes(*, temporal: bool, hidden: int, layers: int, image_size: int,
                   patch_size: int, num_frames: int) -> dict[str, tuple[int, ...]]:
    positions = (image_size // patch_size) ** 2 + 1
    mlp = 4 * hidden
    p = "vision_model."
    shapes: dict[str, tuple[int, ...]] = {
        p + "embeddings.class_embedding": (hidden,),
        p + "embeddings.patch_embedding.weight": (hidden, 3, patch_size, patch_size),
        p + "embeddings.position_embedding.weight": (positions, hidden),
        p + "pre_layrnorm.weight": (hidden,), p + "pre_layrnorm.bias": (hidden,),
        p + "post_layernorm.weight": (hidden,), p + "post_layernorm.bias": (hidden,),
    }
    for i in range(layers):
        layer = f"{p}encoder.layers.{i}."
        attns = ("self_attn", "temporal_attn") if temporal else ("self_attn",)
        norms = (("layer_norm1", "layer_norm2", "temporal_layer_norm1") if temporal
                 else ("layer_norm1", "layer_norm2"))
        for attn in attns:
            for proj in _ATTN:
                shapes[f"{layer}{attn}.{proj}.weight"] = (hidden, hidden)
                shapes[f"{layer}{attn}.{proj}.bias"] = (hidden,)
        for norm in norms:
            shapes[f"{layer}{norm}.weight"] = (hidden,)
            shapes[f"{layer}{norm}.bias"] = (hidden,)
        shapes[f"{layer}mlp.fc1.weight"] = (mlp, hidden)
        shapes[f"{layer}mlp.fc1.bias"] = (mlp,)
        shapes[f"{layer}mlp.fc2.weight"] = (hidden, mlp)
        shapes[f"{layer}mlp.fc2.bias"] = (hidden,)
        if temporal:
            shapes[f"{layer}temporal_embedding"] = (1, num_frames, hidden)
    return shapes


def _text_shapes(hidden: int) -> dict[str, tuple[int, ...]]:
    return {
        "text_model.embeddings.token_embedding.weight": (64, hidden),
        "text_model.embeddings.position_embedding.weight": (77, hidden),
        "text_model.encoder.layers.0.self_attn.q_proj.weight": (hidden, hidden),
        "text_model.final_layer_norm.weight": (hidden,),
        "text_projection.weight": (16, hidden),
        "visual_projection.weight": (16, hidden),
        "logit_scale": (),
    }


def tiny_tower_config(*, kind: str, hidden: int = 32, layers: int = 3, heads: int = 4,
                      image_size: int = 224, patch_size: int = 14, num_frames: int = 8) -> dict:
    """The config.json a released LanguageBind tower carries, shrunk (fields and nesting kept)."""
    video = kind == "video"
    return {
        "architectures": ["CLIPModel"],
        "model_type": "LanguageBindVideo" if video else "LanguageBindImage",
        "initializer_factor": 1.0,
        "logit_scale_init_value": 2.6592,
        "projection_dim": 16,
        "text_config": {"model_type": "clip_text_model", "hidden_size": hidden,
                        "num_hidden_layers": 1, "add_time_attn": False},
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": hidden,
            "intermediate_size": 4 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_channels": 3,
            "image_size": image_size,
            "patch_size": patch_size,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "attention_dropout": 0.0,
            "projection_dim": 16,
            "add_time_attn": video,
            "num_frames": num_frames if video else 1,
            "force_patch_dropout": 0.0,
            "lora_r": 0,
            "lora_alpha": 16,
            "lora_dropout": 0.0,
            "video_decode_backend": "decord",
        },
    }


def tiny_tower_state(*, kind: str, hidden: int = 32, layers: int = 3, image_size: int = 224,
                     patch_size: int = 14, num_frames: int = 8, seed: int = 0,
                     include_text: bool = True) -> dict[str, torch.Tensor]:
    """Random weights under the released key names (plus LanguageBind's position_ids buffer)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = _vision_shapes(temporal=kind == "video", hidden=hidden, layers=layers,
                            image_size=image_size, patch_size=patch_size, num_frames=num_frames)
    if include_text:
        shapes.update(_text_shapes(hidden))
    state = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=gen)
        is_norm_weight = "norm" in key and key.endswith(".weight")
        state[key] = 1.0 + 0.1 * noise if is_norm_weight else 0.1 * noise
    positions = (image_size // patch_size) ** 2 + 1
    state["vision_model.embeddings.position_ids"] = torch.arange(positions)[None]
    return state


def write_tiny_tower(path: Path, *, kind: str, hidden: int = 32, layers: int = 3, heads: int = 4,
                     image_size: int = 224, patch_size: int = 14, num_frames: int = 8,
                     seed: int = 0, fmt: str = "safetensors", shards: int = 1,
                     include_text: bool = True) -> Path:
    """Write ``config.json`` and weights (``fmt`` "safetensors" or "bin"; ``shards`` > 1 writes
    HF-style shards plus an ``.index.json``) into ``path``; returns ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = tiny_tower_config(kind=kind, hidden=hidden, layers=layers, heads=heads,
                               image_size=image_size, patch_size=patch_size,
                               num_frames=num_frames)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    state = tiny_tower_state(kind=kind, hidden=hidden, layers=layers, image_size=image_size,
                             patch_size=patch_size, num_frames=num_frames, seed=seed,
                             include_text=include_text)
    save_weights(path, state, fmt=fmt, shards=shards)
    return path


def save_weights(path: Path, state: dict[str, torch.Tensor], *, fmt: str,
                 shards: int = 1) -> None:
    """Save ``state`` as a tower directory's weights, in the file names LanguageBind uses."""
    from safetensors.torch import save_file

    if fmt not in ("safetensors", "bin"):
        raise ValueError(f"fmt must be 'safetensors' or 'bin', got {fmt!r}")
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")

    def save(tensors: dict[str, torch.Tensor], name: str) -> None:
        if fmt == "safetensors":
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / name))
        else:
            torch.save(tensors, path / name)

    if shards == 1:
        save(state, f"{stem}.{ext}")
        return
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.{ext}"
        part = keys[i::shards]
        save({k: state[k] for k in part}, name)
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (path / f"{stem}.{ext}.index.json").write_text(json.dumps(index, indent=2))
