"""Face-LLaVA vision path: LanguageBind towers, projector, landmark fusion, checkpoint loading.

The stages, in the order a face window flows through them:

* ``preprocess``: 256x256 face crops -> CLIP pixels ``[N, 3, 224, 224]``; uniform frame
  sampling (8 frames per video window).
* ``towers``: the frozen LanguageBind image / video ViT-L/14 towers -> features
  ``[B, 256, C]`` (image) or ``[B, T, 257, C]`` (video), from local tower directories.
* ``fusion``: ``mlp2x_gelu`` projector, face-region landmark projector (9 regions + global)
  and face-region guided cross-attention ("simple" or "masked") -> LLM-width tokens.
* ``vision``: ``VisionPath`` = tower + fusion in one module, ``[B, T * P, hidden]`` in the
  order the LLM sees them; exportable to ONNX with a dynamic batch.
* ``checkpoint``: ``load_facellava`` reads the released checkpoint directory (config, LLaMA
  weights, fusion weights, tokenizer) and the towers, every tensor accounted for.
* ``tokenizer``: the reference's slow sentencepiece LLaMA tokenizer over ``tokenizer.model``.
* ``doctor``: ``check_checkpoint`` inspects a download (headers only) and lists its problems
  (``facestream facellava check``).

Typical use::

    model = load_facellava(ckpt_dir, image_tower=img_dir, video_tower=vid_dir)
    path = model.vision_path("video")
    tokens = path(pixels, landmarks)    # [B, 3, 8, 224, 224], [B, 8, 136] -> [B, 8 * 257, 4096]
"""

from facestream.encoder.facellava.checkpoint import FaceLLaVA, llama_config, load_facellava
from facestream.encoder.facellava.fusion import Fusion, FusionConfig, build_fusion, region_bias
from facestream.encoder.facellava.towers import TowerConfig, VisionTower, load_tower
from facestream.encoder.facellava.vision import VisionPath

__all__ = ["FaceLLaVA", "Fusion", "FusionConfig", "TowerConfig", "VisionPath", "VisionTower",
           "build_fusion", "llama_config", "load_facellava", "load_tower", "region_bias"]
