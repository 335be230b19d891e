"""LanguageBind vision towers and their preprocessing, on tiny random towers (CPU, fast).

References: a plain re-computation of LanguageBind's vision transformer written here from its
order of operations (all layers run, hidden states collected, then indexed as the reference
indexes them), transformers' ``CLIPVisionModel`` for the image tower (slow: its import), and
OpenCV / explicit torch for the pixel pipeline.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from facestream.encoder.facellava.preprocess import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    clip_pixels,
    uniform_indices,
)
from facestream.encoder.facellava.towers import TowerConfig, VisionTower, load_tower
from facestream.errors import AssetError, ConfigError, InputError
from tests.tiny_towers import save_weights, tiny_tower_config, tiny_tower_state, write_tiny_tower

HIDDEN, LAYERS, HEADS, FRAMES = 32, 3, 4, 8


# ---------------------------------------------------------------- reference computation
def _ref_attention(x: torch.Tensor, sd: dict, p: str) -> torch.Tensor:
    # x: [N, S, C]; explicit softmax(q k^T / sqrt(d)) v per head
    n, s, c = x.shape
    d = c // HEADS

    def proj(name: str) -> torch.Tensor:
        return (x @ sd[f"{p}.{name}.weight"].T + sd[f"{p}.{name}.bias"]).view(n, s, HEADS, d)

    q, k, v = proj("q_proj"), proj("k_proj"), proj("v_proj")
    weights = torch.einsum("nshd,nthd->nhst", q, k).mul(d ** -0.5).softmax(-1)
    out = torch.einsum("nhst,nthd->nshd", weights, v).reshape(n, s, c)
    return out @ sd[f"{p}.out_proj.weight"].T + sd[f"{p}.out_proj.bias"]


def _ref_norm(x: torch.Tensor, sd: dict, p: str) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), sd[f"{p}.weight"], sd[f"{p}.bias"], 1e-5)


def reference_hidden_states(sd: dict, pixels: torch.Tensor, *, video: bool) -> list:
    """LanguageBind's ``hidden_states``: pre-LN embeddings, then every layer's output."""
    if video:                                     # [B, C, T, H, W] -> '(b t) c h w'
        b, c, t, h, w = pixels.shape
        pixels = pixels.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    else:
        b, t = pixels.shape[0], 1
    e = "vision_model.embeddings"
    patches = F.conv2d(pixels, sd[f"{e}.patch_embedding.weight"], stride=14)
    patches = patches.flatten(2).transpose(1, 2)
    cls = sd[f"{e}.class_embedding"].expand(patches.shape[0], 1, -1)
    x = torch.cat([cls, patches], 1) + sd[f"{e}.position_embedding.weight"]
    x = _ref_norm(x, sd, "vision_model.pre_layrnorm")
    states = [x]
    for i in range(LAYERS):
        p = f"vision_model.encoder.layers.{i}"
        if video:
            n, c = x.shape[1:]
            x4 = x.view(b, t, n, c)
            if t != 1:
                x4 = x4 + sd[f"{p}.temporal_embedding"][0, :t].view(1, t, 1, c)
            residual = x4
            per_token = x4.permute(0, 2, 1, 3).reshape(b * n, t, c)        # (b n) t c
            per_token = _ref_attention(_ref_norm(per_token, sd, f"{p}.temporal_layer_norm1"),
                                       sd, f"{p}.temporal_attn")
            x = (residual + per_token.view(b, n, t, c).permute(0, 2, 1, 3)).reshape(b * t, n, c)
        x = x + _ref_attention(_ref_norm(x, sd, f"{p}.layer_norm1"), sd, f"{p}.self_attn")
        h = _ref_norm(x, sd, f"{p}.layer_norm2")
        h = h @ sd[f"{p}.mlp.fc1.weight"].T + sd[f"{p}.mlp.fc1.bias"]
        h = h * torch.sigmoid(1.702 * h)
        x = x + h @ sd[f"{p}.mlp.fc2.weight"].T + sd[f"{p}.mlp.fc2.bias"]
        states.append(x)
    if video:
        states = [s.view(b, t, *s.shape[1:]) for s in states]
    return states


def _pixels(kind: str, *, batch: int = 2, frames: int = FRAMES, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, 3, 224, 224) if kind == "image" else (batch, 3, frames, 224, 224)
    return torch.randn(shape, generator=gen)


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """kind -> (loaded tower, the full state dict it was written from)."""
    out = {}
    for kind in ("image", "video"):
        path = write_tiny_tower(tmp_path_factory.mktemp(kind), kind=kind, hidden=HIDDEN,
                                layers=LAYERS, heads=HEADS, num_frames=FRAMES)
        out[kind] = (load_tower(path, kind=kind),
                     tiny_tower_state(kind=kind, hidden=HIDDEN, layers=LAYERS,
                                      num_frames=FRAMES))
    return out


# ---------------------------------------------------------------- loading
@pytest.mark.parametrize("kind", ["image", "video"])
@pytest.mark.parametrize("fmt,shards", [("safetensors", 1), ("bin", 1), ("safetensors", 3),
                                        ("bin", 2)])
def test_tower_loads_from_released_layout(tmp_path, kind, fmt, shards):
    path = write_tiny_tower(tmp_path, kind=kind, fmt=fmt, shards=shards)
    tower = load_tower(path, kind=kind)
    out = tower(_pixels(kind, batch=2))
    expected = [2, 256, HIDDEN] if kind == "image" else [2, FRAMES, 257, HIDDEN]
    assert list(out.shape) == expected
    assert tower.num_tokens == expected[-2] and tower.hidden_size == HIDDEN
    assert not any(p.requires_grad for p in tower.parameters())
    state = tiny_tower_state(kind=kind)
    loaded = tower.state_dict()
    for key, value in loaded.items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    assert any(k.startswith("text_model.") for k in state)      # text keys were written
    assert not any(k.startswith("text_") for k in loaded)       # ... and left out


@pytest.mark.parametrize("kind", ["image", "video"])
def test_features_match_reference_penultimate_layer(towers, kind):
    tower, state = towers[kind]
    pixels = _pixels(kind)
    with torch.no_grad():
        got = tower(pixels)
    want = reference_hidden_states(state, pixels, video=kind == "video")[-2]
    if kind == "image":
        want = want[:, 1:]                                      # select_feature "patch"
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_image_tower_matches_transformers_clip(towers):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    tower, state = towers["image"]
    vision = tiny_tower_config(kind="image")["vision_config"]
    config = CLIPVisionConfig(**{k: vision[k] for k in (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "image_size", "patch_size", "hidden_act", "layer_norm_eps")})
    config._attn_implementation = "eager"
    hf = CLIPVisionModel(config).eval()
    target = hf.state_dict()
    prefix = "" if "embeddings.class_embedding" in target else "vision_model."
    weights = {prefix + k[len("vision_model."):]: v for k, v in state.items()
               if k.startswith("vision_model.") and not k.endswith("position_ids")}
    result = hf.load_state_dict(weights, strict=False)
    assert not result.unexpected_keys
    assert all(k.endswith("position_ids") for k in result.missing_keys)
    pixels = _pixels("image")
    with torch.no_grad():
        want = hf(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        got = tower(pixels)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_only_layers_up_to_the_selected_one_run(towers):
    tower, _ = towers["image"]
    pixels = _pixels("image", batch=1)
    with torch.no_grad():
        before = tower(pixels)
        layers = tower.vision_model.encoder.layers
        saved = [p.clone() for p in layers[-1].parameters()]
        for p in layers[-1].parameters():
            p.add_(1.0)
        after_last = tower(pixels)
        for p, s in zip(layers[-1].parameters(), saved):
            p.copy_(s)
        layers[-2].mlp.fc2.bias.add_(1.0)
        after_penultimate = tower(pixels)
        layers[-2].mlp.fc2.bias.sub_(1.0)
    torch.testing.assert_close(after_last, before, rtol=0, atol=0)
    assert (after_penultimate - before).abs().max() > 0.5


def test_video_frames_interact_through_temporal_layers(towers):
    tower, _ = towers["video"]
    pixels = _pixels("video", batch=1)
    moved = pixels.clone()
    moved[:, :, 0] += 1.0                                       # change frame 0 only
    with torch.no_grad():
        a, b = tower(pixels), tower(moved)
    assert (a[:, 5] - b[:, 5]).abs().max() > 1e-3               # frame 5 sees frame 0


def test_video_tower_without_temporal_layers_is_the_image_tower_per_frame(towers):
    """Zero the temporal embedding and temporal attention output: every frame then goes
    through the spatial layers alone, which an image tower with the same weights computes."""
    video, _ = towers["video"]
    image_config = TowerConfig.from_dict(tiny_tower_config(kind="image"), kind="image")
    image = VisionTower(image_config)
    spatial = {k: v for k, v in video.state_dict().items() if "temporal" not in k}
    image.load_state_dict(spatial, strict=True)
    image.eval()
    pixels = _pixels("video", batch=1)
    with torch.no_grad():
        with_temporal = video(pixels)
        saved = {k: v.clone() for k, v in video.state_dict().items()}
        for layer in video.vision_model.encoder.layers:
            layer.temporal_embedding.zero_()
            layer.temporal_attn.out_proj.weight.zero_()
            layer.temporal_attn.out_proj.bias.zero_()
        without = video(pixels)
        video.load_state_dict(saved)
        per_frame = image(pixels[0].transpose(0, 1))            # [T, 256, C]
    torch.testing.assert_close(without[0, :, 1:], per_frame, rtol=1e-4, atol=1e-5)
    assert (with_temporal - without).abs().max() > 1e-2


@pytest.mark.parametrize("frames", [1, 3, FRAMES])
def test_video_frame_counts(towers, frames):
    tower, state = towers["video"]
    pixels = _pixels("video", batch=2, frames=frames)
    with torch.no_grad():
        got = tower(pixels)
    assert list(got.shape) == [2, frames, 257, HIDDEN]
    torch.testing.assert_close(got, reference_hidden_states(state, pixels, video=True)[-2],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind,shape", [
    ("image", (1, 3, 8, 224, 224)),
    ("image", (1, 3, 112, 112)),
    ("image", (1, 1, 224, 224)),
    ("video", (1, 3, 224, 224)),
    ("video", (1, 3, FRAMES + 1, 224, 224)),
    ("video", (1, 8, 3, 224, 224)),
])
def test_bad_pixel_shapes(towers, kind, shape):
    tower, _ = towers[kind]
    with pytest.raises(InputError, match=r"expects|takes"):
        tower(torch.zeros(shape))


def test_load_casts_dtype(tmp_path):
    tower = load_tower(write_tiny_tower(tmp_path, kind="image"), kind="image",
                       dtype=torch.bfloat16)
    assert {p.dtype for p in tower.parameters()} == {torch.bfloat16}
    assert tower(_pixels("image", batch=1)).dtype == torch.bfloat16


# ---------------------------------------------------------------- asset errors
def _edit_weights(path, edit) -> None:
    state = tiny_tower_state(kind="video")
    edit(state)
    (path / "model.safetensors").unlink()
    save_weights(path, state, fmt="safetensors")


@pytest.mark.parametrize("edit,expected", [
    (lambda s: s.pop("vision_model.encoder.layers.1.temporal_attn.k_proj.bias"),
     r"missing vision_model\.encoder\.layers\.1\.temporal_attn\.k_proj\.bias"),
    (lambda s: s.update({"vision_model.encoder.layers.0.temporal_mlp.fc1.weight":
                         torch.zeros(4, 4)}),
     r"unexpected vision_model\.encoder\.layers\.0\.temporal_mlp\.fc1\.weight"),
    (lambda s: s.update({"vision_model.pre_layernorm.weight":
                         s.pop("vision_model.pre_layrnorm.weight")}),
     r"missing vision_model\.pre_layrnorm\.weight; unexpected vision_model\.pre_layernorm"),
    (lambda s: s.update({"vision_model.encoder.layers.2.temporal_embedding":
                         torch.zeros(1, 4, HIDDEN)}),
     r"mis-shaped tensors: vision_model\.encoder\.layers\.2\.temporal_embedding \[1, 4, 32\]"),
    (lambda s: s.update({"vision_model.embeddings.position_ids": torch.arange(50)[None]}),
     r"position_ids is not 0\.\.256"),
])
def test_vision_key_problems_name_the_key_and_directory(tmp_path, edit, expected):
    path = write_tiny_tower(tmp_path / "video_tower", kind="video")
    _edit_weights(path, edit)
    with pytest.raises(AssetError, match=expected) as info:
        load_tower(path, kind="video")
    assert str(path) in str(info.value)


def test_non_vision_keys_are_ignored(tmp_path):
    path = write_tiny_tower(tmp_path, kind="video")
    _edit_weights(path, lambda s: s.update({"text_model.something.new": torch.zeros(3),
                                            "logit_scale": torch.tensor(4.6)}))
    assert list(load_tower(path, kind="video")(_pixels("video", batch=1)).shape) == \
        [1, FRAMES, 257, HIDDEN]


def _no_dir(path):
    return path / "absent"


def _no_config(path):
    write_tiny_tower(path, kind="image")
    (path / "config.json").unlink()
    return path


def _no_weights(path):
    write_tiny_tower(path, kind="image")
    (path / "model.safetensors").unlink()
    return path


def _bad_json(path):
    write_tiny_tower(path, kind="image")
    (path / "config.json").write_text("{not json")
    return path


def _truncated_weights(path):
    write_tiny_tower(path, kind="image", fmt="bin")
    (path / "pytorch_model.bin").write_bytes(b"\0" * 64)
    return path


def _missing_shard(path):
    write_tiny_tower(path, kind="image", shards=2)
    (path / "model-00002-of-00002.safetensors").unlink()
    return path


@pytest.mark.parametrize("make,expected", [
    (_no_dir, "does not exist"),
    (_no_config, "has no config.json"),
    (_no_weights, "has no weights; expected one of model.safetensors"),
    (_bad_json, "is not readable JSON"),
    (_truncated_weights, "are unreadable"),
    (_missing_shard, "shard .* is missing"),
])
def test_unusable_directories(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(AssetError, match=expected) as info:
        load_tower(path, kind="image")
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- config
def _vision_edit(**changes):
    def edit(config):
        config["vision_config"].update(changes)
        for key, value in changes.items():
            if value is None:
                del config["vision_config"][key]
        return config
    return edit


@pytest.mark.parametrize("kind,edit,expected", [
    ("image", _vision_edit(hidden_size=None), "lacks 'hidden_size'"),
    ("video", _vision_edit(patch_size=None), "lacks 'patch_size'"),
    ("image", lambda c: {k: v for k, v in c.items() if k != "vision_config"},
     "no 'vision_config'"),
    ("image", _vision_edit(add_time_attn=True), "add_time_attn=True"),
    ("video", _vision_edit(add_time_attn=False), "add_time_attn=False"),
    ("image", _vision_edit(num_attention_heads=5), "not divisible"),
    ("image", _vision_edit(patch_size=15), "not a multiple"),
    ("image", _vision_edit(hidden_act="relu"), "hidden_act"),
    ("video", _vision_edit(num_frames=0), "num_frames must be a positive integer"),
])
def test_config_errors(kind, edit, expected):
    with pytest.raises(ConfigError, match=expected):
        TowerConfig.from_dict(edit(tiny_tower_config(kind=kind)), kind=kind)


@pytest.mark.parametrize("select_layer,layers_run,ok", [
    (-2, LAYERS - 1, True), (-1, LAYERS, True), (0, 0, True), (-(LAYERS + 1), 0, True),
    (-(LAYERS + 2), None, False), (LAYERS + 1, None, False),
])
def test_select_layer(select_layer, layers_run, ok):
    config = tiny_tower_config(kind="image")
    if not ok:
        with pytest.raises(ConfigError, match="select_layer"):
            TowerConfig.from_dict(config, kind="image", select_layer=select_layer)
        return
    assert TowerConfig.from_dict(config, kind="image",
                                 select_layer=select_layer).layers_run == layers_run


def test_config_reads_released_fields_and_dict_override(tmp_path):
    config = tiny_tower_config(kind="video")
    config["vision_config_dict"] = {"num_frames": 4}
    parsed = TowerConfig.from_dict(json.loads(json.dumps(config)), kind="video")
    vision = config["vision_config"]
    assert (parsed.hidden_size, parsed.num_hidden_layers, parsed.num_attention_heads,
            parsed.image_size, parsed.patch_size, parsed.hidden_act) == (
        vision["hidden_size"], vision["num_hidden_layers"], vision["num_attention_heads"],
        vision["image_size"], vision["patch_size"], vision["hidden_act"])
    assert parsed.num_frames == 4 and parsed.num_tokens == 257 and parsed.layers_run == 2


# ---------------------------------------------------------------- preprocessing
def _normalise(x: np.ndarray) -> np.ndarray:
    # x: [..., 3] float in [0, 1] -> CLIP-normalised, channels last
    return (x - np.array(OPENAI_CLIP_MEAN, np.float32)) / np.array(OPENAI_CLIP_STD, np.float32)


@pytest.fixture(scope="module")
def face_crop(sample):
    """A 256x256 RGB crop of a real photo, as facestream hands crops over."""
    image = Image.open(sample("single_face.jpg")).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return np.asarray(image.crop((left, top, left + side, top + side)).resize((256, 256)))


@pytest.mark.parametrize("kind,interpolation", [
    ("video", cv2.INTER_LINEAR),
    ("image", cv2.INTER_CUBIC),         # both without antialias, like a torch tensor resize
])
def test_clip_pixels_matches_opencv_resize(face_crop, kind, interpolation):
    """Without antialias (video always; image as torchvision < 0.17 resizes tensors) the
    resize is the plain bilinear / a = -0.75 bicubic OpenCV computes too."""
    got = clip_pixels(face_crop[None], kind=kind, antialias=False)
    assert got.shape == (1, 3, 224, 224) and got.dtype == np.float32
    resized = cv2.resize(face_crop.astype(np.float32) / 255.0, (224, 224),
                         interpolation=interpolation)
    want = _normalise(resized).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(got, want, atol=2e-4)    # an antialiased resize is ~0.2 off


@pytest.fixture(scope="module")
def pipeline_crops(sample):
    """Face-LLaVA crops as the face stage cuts them from real frames: every 40th frame of
    WolfgangLanger (one face) and the five faces of multi_face.jpg, [N, 256, 256, 3]."""
    from facestream.scenes import load_rgb
    from facestream.vision.faces import FaceAnalyzer

    analyzer = FaceAnalyzer(square_crops=True)
    crops = []
    try:
        capture = cv2.VideoCapture(str(sample("WolfgangLanger_Pexels.mp4")))
        index = 0
        while (frame := capture.read()[1]) is not None:
            if index % 40 == 0:
                crops.append(analyzer(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)).chips.square)
            index += 1
        capture.release()
        crops.append(analyzer(load_rgb(sample("multi_face.jpg"))).chips.square)
    finally:
        analyzer.close()
    crops = np.concatenate(crops)
    assert len(crops) >= 15
    return crops


def _pillow_float_bicubic(crop: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pillow's bicubic resize of each channel as a 32-bit float image ([0, 1], no rounding
    or clamping): Pillow's filter (a = -0.5) widened by the downscale factor, which is what
    torchvision >= 0.17 computes on tensors by default (PyTorch's antialiased bicubic)."""
    planes = [np.asarray(Image.fromarray(crop[..., c].astype(np.float32) / 255.0)
                         .resize((width, height), Image.BICUBIC)) for c in range(3)]
    return np.stack(planes, axis=-1)


def test_image_resize_antialiases_as_the_reference_pinned_torchvision(pipeline_crops):
    """The reference (torch 2.5.1, so torchvision 0.20.1) resizes the image tower's tensor
    with antialias on, its default since torchvision 0.17; clip_pixels' default does the same:
    equal to Pillow's float bicubic (an implementation that shares no code with torch) on
    real face crops, and far from the un-antialiased resize."""
    got = clip_pixels(pipeline_crops)                                    # the default
    want = np.stack([_normalise(_pillow_float_bicubic(c, 224, 224)).transpose(2, 0, 1)
                     for c in pipeline_crops])
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_array_equal(got, clip_pixels(pipeline_crops, antialias=True))
    sharp = clip_pixels(pipeline_crops, antialias=False)
    assert np.abs(got - sharp).max() > 0.05          # measured on these frames: 0.3
    # Video frames are never antialiased (pytorchvideo's ShortSideScale), whatever the flag.
    np.testing.assert_array_equal(clip_pixels(pipeline_crops[:2], kind="video"),
                                  clip_pixels(pipeline_crops[:2], kind="video", antialias=False))


def test_antialiased_resize_of_a_non_square_crop(pipeline_crops):
    """Short side to 224 then the centre crop, antialiased: 300x256 -> 262x224 -> rows 19..243."""
    crop = cv2.resize(pipeline_crops[0], (256, 300), interpolation=cv2.INTER_AREA)
    got = clip_pixels(crop[None])
    scaled = _pillow_float_bicubic(crop, 224, 262)
    want = _normalise(scaled[19:243]).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_video_order_normalise_then_resize_is_the_same(face_crop):
    """The video processor normalises before ShortSideScale; the result is the same."""
    x = torch.from_numpy(_normalise(face_crop.astype(np.float32) / 255.0)).permute(2, 0, 1)
    want = F.interpolate(x[None], size=(224, 224), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(clip_pixels(face_crop[None], kind="video"), want.numpy(),
                               atol=1e-5)


@pytest.mark.parametrize("height,width", [(300, 256), (256, 301), (224, 224), (225, 224)])
def test_clip_pixels_short_side_and_centre_crop(face_crop, height, width):
    crop = cv2.resize(face_crop, (width, height), interpolation=cv2.INTER_AREA)
    got = clip_pixels(crop[None], kind="video")
    short = min(height, width)
    new_h, new_w = 224 * height // short, 224 * width // short
    scaled = crop.astype(np.float32) / 255.0
    if (new_h, new_w) != (height, width):
        scaled = cv2.resize(scaled, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, left = int(round((new_h - 224) / 2)), int(round((new_w - 224) / 2))
    want = _normalise(scaled[top:top + 224, left:left + 224]).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(got, want, atol=2e-4)


@pytest.mark.parametrize("crops,kind", [
    (np.zeros((2, 256, 256), np.uint8), "image"),
    (np.zeros((1, 256, 256, 4), np.uint8), "image"),
    (np.zeros((1, 256, 256, 3), np.float32), "image"),
    (np.zeros((1, 256, 256, 3), np.uint8), "audio"),
])
def test_clip_pixels_rejects(crops, kind):
    with pytest.raises(InputError):
        clip_pixels(crops, kind=kind)


def test_clip_pixels_empty_batch():
    assert clip_pixels(np.zeros((0, 256, 256, 3), np.uint8)).shape == (0, 3, 224, 224)


@pytest.mark.parametrize("n,k", [(1, 8), (5, 8), (8, 8), (9, 8), (75, 8), (301, 8), (16, 4),
                                 (1000, 1)])
def test_uniform_indices_follow_the_reference_sampler(n, k):
    got = uniform_indices(n, k)
    assert got == np.linspace(0, n - 1, k, dtype=int).tolist()
    assert len(got) == k and got[0] == 0 and got == sorted(got)
    assert k == 1 or got[-1] == n - 1


@pytest.mark.parametrize("n,k", [(0, 8), (5, 0)])
def test_uniform_indices_rejects(n, k):
    with pytest.raises(InputError):
        uniform_indices(n, k)
