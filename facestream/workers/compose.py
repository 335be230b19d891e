"""The composition root: the one place that chooses and builds the models of a profile.

Everything below it takes its collaborators as arguments; only this module (and the CLI,
which calls it) knows which concrete encoder, language stage and converters a profile uses.
Both the embedded mode and the Kafka worker get their models here.
"""

from __future__ import annotations

from dataclasses import dataclass

from facestream import assets
from facestream.config import Settings
from facestream.vision.faces import FaceAnalyzer
from facestream.workers.pipeline import WindowAnalyzer
from facestream.workers.scheduler import ChangeScheduler, Thresholds


@dataclass
class Models:
    """Everything loaded once per process."""

    faces: FaceAnalyzer
    analyzer: WindowAnalyzer

    @classmethod
    def load(cls, settings: Settings) -> "Models":
        """The face stage, the cheap nets and the profile's language stage (compact: the
        SmolLM2 describer when ``describe`` is on; facellava: Face-LLaVA, always)."""
        from facestream.encoder.compact import CompactEncoder

        encoder = CompactEncoder(settings.cache_dir, backend=settings.encoder_backend,
                                 threads=settings.threads,
                                 fp16=settings.encoder_precision == "fp16",
                                 profile=settings.encoder_batch_profile)
        language = None
        if settings.profile == "facellava":
            from facestream.llm.facellava import load_stage

            language = load_stage(settings)
        elif settings.describe:
            from facestream.llm.smollm import SmolDescriber

            if settings.description_runtime == "llamacpp":
                model = assets.require(settings.cache_dir, assets.SMOLLM_F16)
            else:
                model = assets.require_dir(settings.cache_dir, assets.SMOLLM_DIR,
                                           marker="model.safetensors")
            language = SmolDescriber(model, runtime=settings.description_runtime,
                                     max_new_tokens=settings.description_max_tokens,
                                     threads=settings.threads, max_batch=settings.llm_max_batch,
                                     endpoint=settings.llm_endpoint,
                                     timeout_s=settings.llm_timeout_s,
                                     max_in_flight=settings.llm_max_in_flight,
                                     draft_tokens=settings.llm_draft_tokens)
        faces = FaceAnalyzer.from_settings(settings)
        scheduler = ChangeScheduler(Thresholds.from_settings(settings))
        # Face-LLaVA's answers set the event's fields: its windows wait for them.
        follow = settings.profile == "compact" and settings.description_mode == "follow"
        return cls(faces, WindowAnalyzer(encoder, language, scheduler=scheduler,
                                         profile=settings.profile, follow=follow))

    def close(self) -> None:
        """Stop the describer's thread (after the descriptions being written)."""
        self.analyzer.close()


def conversions() -> list[assets.Conversion]:
    """The files ``models pull`` derives from pulled ones, with the stage code that derives
    them (imported only when a conversion runs: the SmolLM2 ones need torch or gguf; the
    expression net's needs only onnx and h5py)."""
    def expression_onnx(source, target):
        from facestream.encoder.expression import export_expression_onnx

        return export_expression_onnx(source, target)

    def smollm(source, target):
        from facestream.llm.smollm import convert_gguf

        return convert_gguf(source, target)

    def smollm_f16(source, target):
        from facestream.llm.llamacpp import widen_gguf

        return widen_gguf(source, target)

    return [
        assets.Conversion("models/emotion_model.hdf5", assets.EXPRESSION_ONNX,
                          "converting the expression net to ONNX", expression_onnx),
        assets.Conversion(assets.SMOLLM_GGUF, assets.SMOLLM_DIR,
                          "converting SmolLM2-135M-Instruct from GGUF to safetensors "
                          "(once, ~20 s)", smollm, marker="model.safetensors",
                          needs=("torch", "transformers"), extra="torch",
                          used_by="description_runtime=torch"),
        assets.Conversion(assets.SMOLLM_GGUF, assets.SMOLLM_F16,
                          "writing SmolLM2-135M-Instruct's matrices as float16 for llama.cpp "
                          "(once, ~10 s)", smollm_f16),
    ]
