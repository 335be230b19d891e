"""Tiny Face-LLaVA checkpoint directories, in the released layout, for the loader tests.

Key names, shapes and config fields are written out here by hand from the public code
(``ihp-lab/Face-LLaVA``: ``llava_arch.py`` names the modules ``mm_projector``,
``landmarks_projector``, ``global_landmarks_projector``, ``landmarks_cross_attn``;
``multimodal_projector/builder.py`` their parameters; ``train/train.py`` and
``scripts/finetune_facellava.sh`` the config fields and values), not generated from
facestream's modules, so a loader that drifts from the released layout fails against them.

The tokenizer is either what the release ships, a LLaMA-style sentencepiece
``tokenizer.model`` alone (``tokenizer="sentencepiece"``: a tiny BPE model trained here with
LLaMA's trainer options, since Vicuna's own file is not available offline), or SmolLM2's fast
``tokenizer.json`` (copied from facestream's model cache) for the transformers path.  The
vocabulary size is taken from the tokenizer so embeddings and tokenizer agree.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch

from facestream import assets
from facestream.config import Settings
from tests.tiny_towers import save_weights, write_tiny_tower

SMOLLM_DIR = Settings.load().cache_dir / assets.SMOLLM_DIR     # its tokenizer stands in for Vicuna's
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
REGION_POINTS = (("face", 17), ("eyebrow1", 5), ("eyebrow2", 5), ("nose", 4), ("nostril", 5),
                 ("eye1", 6), ("eye2", 6), ("lips", 12), ("teeth", 8))


SENTENCEPIECE_VOCAB = 768
# Text like what the tokenizer meets: the Vicuna prompt, the task questions, answers, and runs
# of spaces (LLaMA's vocabulary holds whitespace-only pieces such as "▁▁").
_CORPUS = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the human's questions.",
    "USER: What emotion is shown in the video? ASSISTANT: The person's expression clearly "
    "indicates fear. Her eyes are wide open and her eyebrows are raised.",
    "How old do you think the person in the picture is, and what makes you think so? He "
    "appears to be about 35 years old, judging by the wrinkles.",
    "Is the video authentic, or is it a fake? The video is authentic; no signs of manipulation.",
    "Which facial action units appear in this image? AU1, AU2, AU4, AU6 and AU12 are active.",
    "Identify the visible features of the face in the image: smiling, young, wavy hair, male.",
    "happiness sadness surprise disgust anger neutral contempt   the  a  an   of  to",
)


@lru_cache(maxsize=1)
def sentencepiece_model() -> bytes:
    """A tiny LLaMA-style sentencepiece model (BPE, byte fallback, digits split, whitespace
    kept as written, dummy prefix, ids unk 0 / bos 1 / eos 2, no pad), trained on ``_CORPUS``
    in about a tenth of a second."""
    import sentencepiece

    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 20), model_writer=out, vocab_size=SENTENCEPIECE_VOCAB,
        model_type="bpe", byte_fallback=True, split_digits=True,
        allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", add_dummy_prefix=True, unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, character_coverage=1.0, num_threads=1, minloglevel=2)
    return out.getvalue()


def tokenizer_vocab_size(tokenizer: str = "smollm") -> int:
    """How many tokens the ``tokenizer`` kind holds (the config's ``vocab_size``)."""
    if tokenizer == "sentencepiece":
        return SENTENCEPIECE_VOCAB
    return _smollm_vocab_size()


@lru_cache(maxsize=1)
def _smollm_vocab_size() -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(SMOLLM_DIR), local_files_only=True))


def write_tokenizer(path: Path, tokenizer: str) -> None:
    """The ``tokenizer`` kind's files into ``path``: ``tokenizer.model`` alone
    (sentencepiece) or SmolLM2's fast tokenizer files."""
    if tokenizer == "sentencepiece":
        (path / "tokenizer.model").write_bytes(sentencepiece_model())
        return
    for name in TOKENIZER_FILES:
        if (SMOLLM_DIR / name).is_file():
            shutil.copy(SMOLLM_DIR / name, path / name)


def tiny_config(*, cross_attn_type: str = "simple", hidden: int = 64, mm_hidden: int = 32,
                layers: int = 2, heads: int = 4, intermediate: int = 128,
                use_landmark_tokens: bool = False, image_tower: str | None = None,
                video_tower: str | None = None, tokenizer: str = "smollm") -> dict:
    """A released-style config.json (field names and values of the Face-LLaVA 7B training
    run; sizes shrunk).  Towers default to the released hub ids."""
    return {
        "_name_or_path": "./checkpoints/facellava-7b",
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "max_position_embeddings": 4096,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": heads,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.31.0",
        "use_cache": True,
        "vocab_size": tokenizer_vocab_size(tokenizer),
        "mm_image_tower": image_tower or "LanguageBind/LanguageBind_Image",
        "mm_video_tower": video_tower or "LanguageBind/LanguageBind_Video_merge",
        **fusion_fields(cross_attn_type=cross_attn_type, hidden=hidden, mm_hidden=mm_hidden,
                        use_landmark_tokens=use_landmark_tokens),
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "image_aspect_ratio": "pad",
        "use_mm_proj": True,
        "tune_mm_mlp_adapter": False,
        "tune_landmarks_mlp_adapter": False,
        "freeze_mm_mlp_adapter": False,
        "mm_projector_lr": None,
        "tokenizer_model_max_length": 3072,
        "tokenizer_padding_side": "right",
        "group_by_modality_length": True,
    }


def fusion_fields(*, cross_attn_type: str = "simple", hidden: int = 64, mm_hidden: int = 32,
                  use_landmark_tokens: bool = False) -> dict:
    """The config fields the fusion stage reads, with the released training script's values
    (scripts/finetune_facellava.sh) and the value llava_arch.py forces for the landmarks."""
    return {
        "hidden_size": hidden,
        "mm_hidden_size": mm_hidden,
        "mm_projector_type": "mlp2x_gelu",
        "landmarks_projector_type": "landmarks_region_projector",
        "global_landmarks_projector_type": "linear",
        "cross_attn_type": cross_attn_type,
        "use_landmark_tokens": use_landmark_tokens,
        "landmarks_hidden_size": 136,
    }


def fusion_shapes(*, cross_attn_type: str, hidden: int, mm_hidden: int
                  ) -> dict[str, tuple[int, ...]]:
    """The released fusion keys for mlp2x_gelu + region projector + linear global."""
    d = hidden
    shapes: dict[str, tuple[int, ...]] = {
        "model.mm_projector.0.weight": (d, mm_hidden), "model.mm_projector.0.bias": (d,),
        "model.mm_projector.2.weight": (d, d), "model.mm_projector.2.bias": (d,),
        "model.global_landmarks_projector.weight": (d, 136),
        "model.global_landmarks_projector.bias": (d,),
    }
    for name, points in REGION_POINTS:
        shapes[f"model.landmarks_projector.region_layers.{name}.weight"] = (d, 2 * points)
        shapes[f"model.landmarks_projector.region_layers.{name}.bias"] = (d,)
    attn = "model.landmarks_cross_attn."
    if cross_attn_type == "simple":     # nn.MultiheadAttention's packed projection
        shapes.update({attn + "cross_attn.attn.in_proj_weight": (3 * d, d),
                       attn + "cross_attn.attn.in_proj_bias": (3 * d,),
                       attn + "cross_attn.attn.out_proj.weight": (d, d),
                       attn + "cross_attn.attn.out_proj.bias": (d,)})
    else:
        for proj in ("q_proj", "k_proj", "v_proj"):
            shapes[f"{attn}cross_attn.{proj}.weight"] = (d, d)
            shapes[f"{attn}cross_attn.{proj}.bias"] = (d,)
    for norm in ("cross_attn.ln", "ln"):          # "ln" is the unused one
        shapes[f"{attn}{norm}.weight"] = (d,)
        shapes[f"{attn}{norm}.bias"] = (d,)
    shapes[attn + "linear_proj.weight"] = (d, d)
    shapes[attn + "linear_proj.bias"] = (d,)
    return shapes


def llm_shapes(config: dict, *, rotary_buffers: bool = False) -> dict[str, tuple[int, ...]]:
    """LLaMA keys as LlavaLlamaForCausalLM saves them (``rotary_buffers``: the
    ``rotary_emb.inv_freq`` buffers older transformers wrote too)."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    head = h // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h),
                                          "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for n in range(config["num_hidden_layers"]):
        layer = f"model.layers.{n}."
        shapes.update({
            layer + "self_attn.q_proj.weight": (h, h), layer + "self_attn.k_proj.weight": (kv, h),
            layer + "self_attn.v_proj.weight": (kv, h), layer + "self_attn.o_proj.weight": (h, h),
            layer + "mlp.gate_proj.weight": (i, h), layer + "mlp.up_proj.weight": (i, h),
            layer + "mlp.down_proj.weight": (h, i),
            layer + "input_layernorm.weight": (h,), layer + "post_attention_layernorm.weight": (h,),
        })
        if rotary_buffers:
            shapes[layer + "self_attn.rotary_emb.inv_freq"] = (head // 2,)
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights ~ 0.1 N(0, 1); norm scales ~ 1 + 0.1 N(0, 1), so no parameter is inert."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=gen)
        is_norm = key.endswith(".weight") and ("norm" in key or key.endswith("ln.weight"))
        state[key] = 1.0 + 0.1 * noise if is_norm else 0.1 * noise
    return state


def write_tiny_checkpoint(path: Path, *, cross_attn_type: str = "simple",
                          fmt: str = "safetensors", shards: int = 1, hidden: int = 64,
                          mm_hidden: int = 32, layers: int = 2, use_landmark_tokens: bool = False,
                          towers: bool = True, tower_layers: int = 2, rotary_buffers: bool = False,
                          seed: int = 0, tokenizer: str = "smollm",
                          edit_state: Callable[[dict[str, torch.Tensor]], None] | None = None,
                          edit_config: Callable[[dict], None] | None = None) -> Path:
    """Write a checkpoint directory at ``path`` (config.json, weights in ``fmt`` with
    ``shards`` files, the ``tokenizer`` kind's files: see ``write_tokenizer``) and, with
    ``towers``, tiny LanguageBind towers
    under it whose absolute paths go into ``mm_image_tower`` / ``mm_video_tower``.
    ``edit_state`` / ``edit_config`` may change the tensors / config in place before they
    are written (to make broken checkpoints).  Returns ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    image = video = None
    if towers:
        image = str(write_tiny_tower(path / "LanguageBind_Image", kind="image", hidden=mm_hidden,
                                     layers=tower_layers, seed=seed + 1))
        video = str(write_tiny_tower(path / "LanguageBind_Video_merge", kind="video",
                                     hidden=mm_hidden, layers=tower_layers, seed=seed + 2))
    config = tiny_config(cross_attn_type=cross_attn_type, hidden=hidden, mm_hidden=mm_hidden,
                         layers=layers, use_landmark_tokens=use_landmark_tokens,
                         image_tower=image, video_tower=video, tokenizer=tokenizer)
    shapes = {**llm_shapes(config, rotary_buffers=rotary_buffers),
              **fusion_shapes(cross_attn_type=cross_attn_type, hidden=hidden, mm_hidden=mm_hidden)}
    state = random_state(shapes, seed=seed)
    if edit_state is not None:
        edit_state(state)
    if edit_config is not None:
        edit_config(config)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    save_weights(path, state, fmt=fmt, shards=shards)
    write_tokenizer(path, tokenizer)
    return path


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory written by ``write_tiny_checkpoint``."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    for file in files:
        state.update(load_file(str(file)) if file.suffix == ".safetensors"
                     else torch.load(file, weights_only=True))
    return state
