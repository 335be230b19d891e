"""Face-LLaVA fusion stage and vision path on tiny random weights (CPU, float32).

References are independent of facestream's modules: the tensors are addressed by their
released key names (tests/tiny_facellava.py), attention goes through torch's
``nn.MultiheadAttention`` or a per-head loop, and the "masked" bias through a plain Python
loop over tokens and regions written from the public code's description.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facestream.encoder.facellava.fusion import (
    Fusion,
    FusionConfig,
    build_fusion,
    region_bias,
)
from facestream.encoder.facellava.towers import load_tower
from facestream.encoder.facellava.vision import VisionPath
from facestream.errors import AssetError, ConfigError, InputError
from tests.tiny_facellava import (
    REGION_POINTS,
    fusion_fields,
    fusion_shapes,
    random_state,
)
from tests.tiny_towers import write_tiny_tower

B, T, D, C = 2, 3, 64, 32
ATTN = "model.landmarks_cross_attn."


def _state(cross_attn_type: str, *, seed: int = 0) -> dict[str, torch.Tensor]:
    return random_state(fusion_shapes(cross_attn_type=cross_attn_type, hidden=D, mm_hidden=C),
                        seed=seed)


def _fusion(cross_attn_type: str = "simple", *, grid: str = "reference",
            use_landmark_tokens: bool = False, state=None) -> Fusion:
    config = fusion_fields(cross_attn_type=cross_attn_type, hidden=D, mm_hidden=C,
                           use_landmark_tokens=use_landmark_tokens)
    return build_fusion(state if state is not None else _state(cross_attn_type), config,
                        dtype=torch.float32, grid=grid)


def _inputs(num_tokens: int, *, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(B, T, num_tokens, C, generator=gen)     # [B, T, N, C]
    landmarks = torch.rand(B, T, 136, generator=gen)               # [B, T, 136] in 0..1
    return features, landmarks


# ---- independent references -------------------------------------------------------------

def _region_slices() -> list[slice]:
    starts = np.cumsum([0] + [n for _, n in REGION_POINTS])
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(starts)]


def loop_region_bias(landmarks: torch.Tensor, *, num_tokens: int, grid: str) -> torch.Tensor:
    """The public code's distance mask, token by token: patch p = row * 16 + col has centre
    ((row + .5) / 16, (col + .5) / 16); "reference" compares (row centre, col centre) with a
    region centroid's (x, y), "xy" compares (col centre, row centre); the CLS token (first of
    257) has distance 0 to every region; bias = softmax(-distance) over the 9 regions."""
    g = 16
    has_cls = num_tokens == g * g + 1
    frames = []
    for xy in landmarks.double().reshape(-1, 136).tolist():
        points = [(xy[2 * i], xy[2 * i + 1]) for i in range(68)]
        centroids = [(sum(p[0] for p in points[s]) / len(points[s]),
                      sum(p[1] for p in points[s]) / len(points[s]))
                     for s in _region_slices()]
        rows = []
        for token in range(num_tokens):
            if has_cls and token == 0:
                distances = [0.0] * 9
            else:
                row, col = divmod(token - has_cls, g)
                r, c = (row + 0.5) / g, (col + 0.5) / g
                px, py = (r, c) if grid == "reference" else (c, r)
                distances = [math.hypot(px - cx, py - cy) for cx, cy in centroids]
            weights = [math.exp(-d) for d in distances]
            rows.append([w / sum(weights) for w in weights])
        frames.append(rows)
    return torch.tensor(frames).reshape(*landmarks.shape[:2], num_tokens, 9).float()


def _manual_visual_and_tokens(state, features, landmarks):
    """Projector, region + global landmark tokens, from the released keys."""
    p = "model.mm_projector."
    visual = F.linear(F.gelu(F.linear(features, state[p + "0.weight"], state[p + "0.bias"])),
                      state[p + "2.weight"], state[p + "2.bias"])                # [B, T, N, D]
    points = landmarks.reshape(*landmarks.shape[:2], 68, 2)
    regions = []
    for (name, _), sl in zip(REGION_POINTS, _region_slices()):
        key = f"model.landmarks_projector.region_layers.{name}."
        regions.append(F.linear(points[:, :, sl].flatten(2), state[key + "weight"],
                                state[key + "bias"]))
    g = "model.global_landmarks_projector."
    global_token = F.linear(landmarks, state[g + "weight"], state[g + "bias"])  # [B, T, D]
    tokens = torch.stack(regions, dim=2) + global_token[:, :, None]              # [B, T, 9, D]
    return visual, tokens, global_token


def _manual_tail(state, visual, attended):
    """LayerNorm(visual + attention) -> linear_proj -> visual + 0.1 * that."""
    y = F.layer_norm(visual + attended, (D,), state[ATTN + "cross_attn.ln.weight"],
                     state[ATTN + "cross_attn.ln.bias"])
    return visual + 0.1 * F.linear(y, state[ATTN + "linear_proj.weight"],
                                   state[ATTN + "linear_proj.bias"])


def manual_simple(state, features, landmarks):
    visual, tokens, _ = _manual_visual_and_tokens(state, features, landmarks)
    mha = torch.nn.MultiheadAttention(D, 8, batch_first=True)
    mha.load_state_dict({k[len(ATTN + "cross_attn.attn."):]: v for k, v in state.items()
                         if k.startswith(ATTN + "cross_attn.attn.")})
    n = visual.shape[2]
    attended, _ = mha(visual.reshape(-1, n, D), tokens.reshape(-1, 9, D),
                      tokens.reshape(-1, 9, D))
    return _manual_tail(state, visual, attended.reshape(visual.shape))


def manual_masked(state, features, landmarks, *, grid):
    visual, tokens, _ = _manual_visual_and_tokens(state, features, landmarks)
    bias = loop_region_bias(landmarks, num_tokens=visual.shape[2], grid=grid)   # [B, T, N, 9]
    proj = {n: F.linear(x, state[f"{ATTN}cross_attn.{n}.weight"],
                        state[f"{ATTN}cross_attn.{n}.bias"])
            for n, x in (("q_proj", visual), ("k_proj", tokens), ("v_proj", tokens))}
    heads = []
    for h in range(8):
        sl = slice(8 * h, 8 * (h + 1))
        q, k, v = (proj[n][..., sl] for n in ("q_proj", "k_proj", "v_proj"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(8) + bias
        heads.append(scores.softmax(-1) @ v)
    return _manual_tail(state, visual, torch.cat(heads, dim=-1))


# ---- shapes -------------------------------------------------------------------------------

@pytest.mark.parametrize("cross_attn_type", ["simple", "masked"])
@pytest.mark.parametrize("num_tokens", [256, 257])
@pytest.mark.parametrize("use_landmark_tokens", [False, True])
def test_output_shape(cross_attn_type, num_tokens, use_landmark_tokens):
    fusion = _fusion(cross_attn_type, use_landmark_tokens=use_landmark_tokens)
    features, landmarks = _inputs(num_tokens)
    with torch.no_grad():
        out = fusion(features, landmarks)
    assert out.shape == (B, T, num_tokens + use_landmark_tokens, D)
    assert fusion.tokens_per_frame(num_tokens) == num_tokens + use_landmark_tokens


# ---- against independent computations -----------------------------------------------------

@pytest.mark.parametrize("num_tokens", [256, 257])
@pytest.mark.parametrize("grid", ["reference", "xy"])
def test_region_bias_matches_loop(num_tokens, grid):
    _, landmarks = _inputs(num_tokens)
    landmarks = landmarks[:1, :2]
    got = region_bias(landmarks, num_tokens=num_tokens, grid=grid)
    torch.testing.assert_close(got, loop_region_bias(landmarks, num_tokens=num_tokens, grid=grid),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("grid, peak", [("reference", (14, 1)), ("xy", (1, 14))])
def test_reference_grid_compares_rows_with_x(grid, peak):
    """eye1 at x = 0.9, y = 0.1 (top right of the crop), the rest at the bottom left: the
    axis-consistent grid favours eye1 at row 1, column 14; the reference grid at row 14,
    column 1 (its patch points are (row, col) while landmarks are (x, y))."""
    landmarks = torch.tensor([0.1, 0.9] * 68).reshape(1, 1, 136)
    eye1 = dict(zip([n for n, _ in REGION_POINTS], _region_slices()))["eye1"]
    landmarks.view(1, 1, 68, 2)[0, 0, eye1] = torch.tensor([0.9, 0.1])
    column = [n for n, _ in REGION_POINTS].index("eye1")
    bias = region_bias(landmarks, num_tokens=256, grid=grid)[0, 0, :, column]   # [256]
    # The largest value (patches at equal distance tie exactly: compare values, not argmax),
    # and far above the mirrored patch the other grid would favour.
    assert float(bias[peak[0] * 16 + peak[1]]) == pytest.approx(float(bias.max()), abs=1e-7)
    assert float(bias[peak[0] * 16 + peak[1]]) > 1.5 * float(bias[peak[1] * 16 + peak[0]])


@pytest.mark.parametrize("num_tokens", [256, 257])
def test_simple_matches_multihead_attention(num_tokens):
    state = _state("simple")
    features, landmarks = _inputs(num_tokens)
    with torch.no_grad():
        got = _fusion("simple", state=state)(features, landmarks)
        want = manual_simple(state, features, landmarks)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_tokens", [256, 257])
@pytest.mark.parametrize("grid", ["reference", "xy"])
def test_masked_matches_per_head_loop(num_tokens, grid):
    state = _state("masked")
    features, landmarks = _inputs(num_tokens)
    with torch.no_grad():
        got = _fusion("masked", grid=grid, state=state)(features, landmarks)
        want = manual_masked(state, features, landmarks, grid=grid)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_appended_token_is_the_global_landmark_token():
    state = _state("simple")
    features, landmarks = _inputs(257)
    with torch.no_grad():
        out = _fusion("simple", use_landmark_tokens=True, state=state)(features, landmarks)
        plain = _fusion("simple", state=state)(features, landmarks)
    _, _, global_token = _manual_visual_and_tokens(state, features, landmarks)
    torch.testing.assert_close(out[:, :, -1], global_token, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, :, :-1], plain, rtol=0, atol=0)


# ---- the landmark path matters; the unused LayerNorm does not ----------------------------

@pytest.mark.parametrize("cross_attn_type", ["simple", "masked"])
def test_landmarks_change_the_output(cross_attn_type):
    fusion = _fusion(cross_attn_type)
    features, landmarks = _inputs(257)
    with torch.no_grad():
        a = fusion(features, landmarks)
        b = fusion(features, landmarks.flip(-1))
        projector_only = fusion(features)
    assert (a - b).abs().max() > 1e-3
    assert (a - projector_only).abs().max() > 1e-3


def test_without_landmarks_it_is_the_projector_alone():
    state = _state("simple")
    features, landmarks = _inputs(256)
    with torch.no_grad():
        got = _fusion("simple", use_landmark_tokens=True, state=state)(features)
        visual, _, _ = _manual_visual_and_tokens(state, features, landmarks)
    torch.testing.assert_close(got, visual, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cross_attn_type", ["simple", "masked"])
def test_unused_ln_is_loaded_but_not_applied(cross_attn_type):
    state = _state(cross_attn_type)
    other = {**state, ATTN + "ln.weight": torch.full((D,), 5.0), ATTN + "ln.bias": torch.ones(D)}
    features, landmarks = _inputs(257)
    fusion = _fusion(cross_attn_type, state=other)
    assert torch.equal(fusion.landmarks_cross_attn.ln.weight, other[ATTN + "ln.weight"])
    with torch.no_grad():
        torch.testing.assert_close(fusion(features, landmarks),
                                   _fusion(cross_attn_type, state=state)(features, landmarks),
                                   rtol=0, atol=0)


# ---- strict loading and config validation --------------------------------------------------

def _renamed(old: str, new: str):
    def edit(state):
        state[new] = state.pop(old)
    return edit


@pytest.mark.parametrize("edit, named", [
    (_renamed(ATTN + "linear_proj.weight", ATTN + "linear.weight"),
     [ATTN + "linear_proj.weight", ATTN + "linear.weight"]),
    (lambda s: s.__setitem__("model.mm_projector.4.weight", torch.zeros(D, D)),
     ["model.mm_projector.4.weight"]),
    (lambda s: s.pop(ATTN + "ln.bias"), [ATTN + "ln.bias"]),
    (lambda s: s.__setitem__("model.mm_projector.0.weight", torch.zeros(D, C + 1)),
     ["model.mm_projector.0.weight"]),
])
def test_build_fusion_rejects_mismatched_keys(edit, named):
    state = _state("simple")
    edit(state)
    with pytest.raises(AssetError) as err:
        _fusion("simple", state=state)
    assert all(key in str(err.value) for key in named), str(err.value)
    assert "\n" not in str(err.value)


def test_simple_weights_do_not_load_as_masked():
    with pytest.raises(AssetError, match="cross_attn.attn.in_proj_weight"):
        _fusion("masked", state=_state("simple"))


@pytest.mark.parametrize("change, message", [
    ({"cross_attn_type": None},
     r"lacks cross_attn_type \(the reference would assume cross_attn_type='simple'\)"),
    ({"mm_projector_type": None, "landmarks_projector_type": None},
     r"lacks mm_projector_type, landmarks_projector_type \(the reference would assume "
     r"mm_projector_type='linear', landmarks_projector_type='linear'\)"),
    ({"global_landmarks_projector_type": None}, "global_landmarks_projector_type='linear'"),
    ({"mm_hidden_size": None}, "lacks mm_hidden_size"),
    ({"cross_attn_type": "gated"}, "cross_attn_type='gated'"),
    ({"mm_projector_type": "naive_face_mask_adapter"}, "mm_projector_type"),
    ({"global_landmarks_projector_type": "landmarks_region_projector"},
     "global_landmarks_projector_type"),
    ({"landmarks_projector_type": "linear", "cross_attn_type": "masked"}, "needs"),
    ({"landmarks_hidden_size": 68}, "landmarks_hidden_size"),
    ({"use_landmark_tokens": "yes"}, "use_landmark_tokens"),
])
def test_config_errors(change, message):
    config = {**fusion_fields(hidden=D, mm_hidden=C), **change}
    with pytest.raises(ConfigError, match=message):
        FusionConfig.from_dict(config)


@pytest.mark.parametrize("kinds, keys", [
    ({"mm_projector_type": "linear"}, ["mm_projector.weight"]),
    ({"mm_projector_type": "mlp3x_gelu"}, ["mm_projector.4.weight"]),
    ({"landmarks_projector_type": "linear"}, ["landmarks_projector.weight"]),
    ({"global_landmarks_projector_type": "mlp2x_gelu"}, ["global_landmarks_projector.2.weight"]),
])
def test_other_reference_projector_kinds(kinds, keys):
    """The reference's other builder kinds: Linear, or Linear (GELU Linear)*(N-1)."""
    fusion = Fusion(FusionConfig.from_dict({**fusion_fields(hidden=D, mm_hidden=C), **kinds}))
    assert all(k in fusion.state_dict() for k in keys)
    features, landmarks = _inputs(256)
    with torch.no_grad():
        assert fusion(features, landmarks).shape == (B, T, 256, D)


def test_bad_inputs_say_what_was_expected():
    fusion = _fusion("simple")
    features, landmarks = _inputs(257)
    with pytest.raises(InputError, match="expected"):
        fusion(features[..., :-1], landmarks)
    with pytest.raises(InputError, match="136"):
        fusion(features, landmarks[..., :68])


# ---- vision path ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    return {kind: load_tower(write_tiny_tower(root / kind, kind=kind, hidden=C, layers=2),
                             kind=kind) for kind in ("image", "video")}


def test_video_path_flattens_frames_in_order(towers):
    fusion = _fusion("masked", use_landmark_tokens=True)
    path = VisionPath(towers["video"], fusion, kind="video")
    pixels = torch.randn(1, 3, 2, 224, 224)
    landmarks = torch.rand(1, 2, 136)
    with torch.no_grad():
        out = path(pixels, landmarks)
        per_frame = fusion(towers["video"](pixels), landmarks)      # [1, 2, 258, D]
    assert path.tokens_per_frame == 258
    assert out.shape == (1, 2 * 258, D)
    for t in range(2):
        assert torch.equal(out[:, t * 258:(t + 1) * 258], per_frame[:, t])


def test_image_path_takes_one_landmark_row(towers):
    path = VisionPath(towers["image"], _fusion("masked"), kind="image")
    pixels, landmarks = torch.randn(2, 3, 224, 224), torch.rand(2, 136)
    with torch.no_grad():
        flat = path(pixels, landmarks)
        framed = path(pixels, landmarks[:, None])
    assert flat.shape == (2, 256, D)
    assert torch.equal(flat, framed)
    with pytest.raises(InputError, match="one row"):
        path(pixels, torch.rand(2, 3, 136))


def test_path_rejects_a_tower_of_the_wrong_width(towers):
    config = fusion_fields(hidden=D, mm_hidden=C + 1)
    with pytest.raises(ConfigError, match="mm_hidden_size"):
        VisionPath(towers["image"], Fusion(FusionConfig.from_dict(config)), kind="image")


@pytest.mark.slow
@pytest.mark.parametrize("kind, cross_attn_type", [("video", "masked"), ("image", "simple")])
def test_vision_path_exports_to_onnx(towers, tmp_path, kind, cross_attn_type):
    """Opset 17, TorchScript exporter, dynamic batch: onnxruntime agrees at batch 1 and 3."""
    import onnxruntime as ort

    path = VisionPath(towers[kind], _fusion(cross_attn_type, use_landmark_tokens=True),
                      kind=kind)
    frames = 2 if kind == "video" else 1
    shape = (3, frames, 224, 224) if kind == "video" else (3, 224, 224)
    onnx_file = tmp_path / "vision.onnx"
    torch.onnx.export(path, (torch.randn(1, *shape), torch.rand(1, frames, 136)), str(onnx_file),
                      dynamo=False, opset_version=17, input_names=["pixels", "landmarks"],
                      output_names=["tokens"],
                      dynamic_axes={name: {0: "batch"}
                                    for name in ("pixels", "landmarks", "tokens")})
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        pixels, landmarks = torch.randn(batch, *shape), torch.rand(batch, frames, 136)
        with torch.no_grad():
            want = path(pixels, landmarks).numpy()
        got = session.run(None, {"pixels": pixels.numpy(), "landmarks": landmarks.numpy()})[0]
        assert got.shape == want.shape == (batch, frames * path.tokens_per_frame, D)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
