"""`darkminer toy train`: every ShapesWorld recipe in order, resumable per stage, deterministic given a seed.

Stages: tokenizer -> classifier -> clip (its text tower is the text encoder) -> vae -> unet -> clip_vision (the
image side fine-tuned with the text tower frozen) -> assemble. A finished
stage is kept under `<output_dir>/.stages/` and loaded, not retrained, when the command is run again. The result is a
standard diffusers `StableDiffusionPipeline` directory plus `clip/` and `classifier/`, weights stored in fp16.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPModel, CLIPTokenizer

from .classifier import ShapesClassifier
from .data import ShapesData
from .recipes.classifier import train_classifier
from .recipes.clip import train_clip
from .recipes.common import RecipeSettings
from .recipes.unet import SD_BETAS, train_unet
from .recipes.vae import train_vae
from .tokenizer import build_tokenizer


@dataclass
class ToyTrainConfig:
    """Settings of the ShapesWorld training recipes (the defaults are what the shipped weights were made with)."""

    output_dir: str = field(metadata={"help": "Where the pipeline directory is written."})
    seed: int = field(default=0, metadata={"help": "Seeds data, initialisation and every random draw."})
    dataset_size: int = field(default=40000, metadata={"help": "Number of rendered training images."})
    classifier: RecipeSettings = field(default_factory=lambda: RecipeSettings(steps=1000, batch_size=128, lr=2e-3))
    clip: RecipeSettings = field(default_factory=lambda: RecipeSettings(steps=2500, batch_size=64, lr=1e-3))
    vae: RecipeSettings = field(default_factory=lambda: RecipeSettings(steps=2000, batch_size=64, lr=1e-3))
    unet: RecipeSettings = field(default_factory=lambda: RecipeSettings(steps=6000, batch_size=64, lr=5e-4))
    clip_vision: RecipeSettings = field(default_factory=lambda: RecipeSettings(steps=1000, batch_size=64, lr=3e-4))

    def __post_init__(self):
        if self.dataset_size < 64:
            raise ValueError(f"dataset_size={self.dataset_size} is too small; use at least 64 images.")
        for name in ("classifier", "clip", "vae", "unet", "clip_vision"):
            settings = getattr(self, name)
            if isinstance(settings, dict):
                settings = RecipeSettings(**settings)
                setattr(self, name, settings)
            if settings.steps < 1 or settings.batch_size < 1 or settings.lr <= 0:
                raise ValueError(f"{name}: steps, batch_size and lr must be positive, got {settings}.")
            settings.seed = self.seed

    @classmethod
    def quick(cls, output_dir: str, seed: int = 0) -> ToyTrainConfig:
        """A few steps of every recipe on a tiny dataset: for tests, not for use."""
        tiny = dict(steps=3, batch_size=8, lr=1e-3, warmup=1)
        return cls(output_dir, seed, 128, *(RecipeSettings(**tiny) for _ in range(5)))


def _save_atomically(directory: Path, save_fn) -> None:
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_fn(tmp)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)


def declare_float32(*config_files: Path) -> None:
    """Make transformers configs say float32 although the weights beside them are stored in float16.

    The package ships float16 weights to halve its size. transformers records the saving dtype in the config and
    loads in it by default, while diffusers loads in float32, so plain `StableDiffusionPipeline.from_pretrained`
    would pair an fp16 text encoder with an fp32 UNet and fail on the first prompt.
    """

    def fix(node):
        if isinstance(node, dict):
            return {
                k: ("float32" if k in ("dtype", "torch_dtype") and v == "float16" else fix(v)) for k, v in node.items()
            }
        return node

    for path in config_files:
        path.write_text(json.dumps(fix(json.loads(path.read_text())), indent=2, sort_keys=True) + "\n")


def train_shapesworld(config: ToyTrainConfig) -> Path:
    """Run (or resume) every recipe and write the ShapesWorld pipeline to `config.output_dir`."""
    out = Path(config.output_dir)
    stages = out / ".stages"
    stages.mkdir(parents=True, exist_ok=True)
    timings = json.loads((stages / "timings.json").read_text()) if (stages / "timings.json").exists() else {}

    def stage(name, train_fn, save_fn, load_fn):
        path = stages / name
        if path.exists():
            return load_fn(path)
        start = time.perf_counter()
        result = train_fn()
        _save_atomically(path, lambda p: save_fn(result, p))
        timings[name] = round(time.perf_counter() - start, 1)
        (stages / "timings.json").write_text(json.dumps(timings, indent=2))
        return result

    stage("tokenizer", lambda: None, lambda _, p: build_tokenizer(p), lambda p: None)
    tokenizer = CLIPTokenizer.from_pretrained(stages / "tokenizer")
    data = ShapesData(config.dataset_size, config.seed)
    classifier = stage(
        "classifier", lambda: train_classifier(data, config.classifier), lambda m, p: m.save(p), ShapesClassifier.load
    )
    clip = stage(
        "clip",
        lambda: train_clip(data, tokenizer, config.clip),
        lambda m, p: m.save_pretrained(p),
        lambda p: CLIPModel.from_pretrained(p).eval(),
    )
    vae = stage(
        "vae", lambda: train_vae(data, config.vae), lambda m, p: m.save_pretrained(p), AutoencoderKL.from_pretrained
    )
    unet = stage(
        "unet",
        lambda: train_unet(data, vae, tokenizer, clip.text_model, config.unet),
        lambda m, p: m.save_pretrained(p),
        UNet2DConditionModel.from_pretrained,
    )
    # Last, so that the text tower the UNet was trained against is untouched: sharpen CLIP's image side.
    clip = stage(
        "clip_vision",
        lambda: train_clip(data, tokenizer, config.clip_vision, model=clip),
        lambda m, p: m.save_pretrained(p),
        lambda p: CLIPModel.from_pretrained(p).eval(),
    )

    def save_pipeline(tmp: Path) -> None:
        scheduler = DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=clip.text_model,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        clip.to(torch.float16).save_pretrained(tmp / "clip", safe_serialization=True)
        declare_float32(tmp / "text_encoder" / "config.json", tmp / "clip" / "config.json")
        # ShapesWorld CLIP sees 32 px images scaled to [-1, 1] (see recipes/clip.py), not OpenAI's statistics.
        preprocess = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": {"shortest_edge": 32}}
        (tmp / "clip" / "preprocessor_config.json").write_text(json.dumps(preprocess, indent=2))
        # transformers 5 saves only tokenizer.json; ship the BPE files too, so `CLIPTokenizer` users see them.
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(stages / "tokenizer" / name, tmp / "tokenizer" / name)
        classifier.save(tmp / "classifier")
        record = {"config": asdict(config), "seconds_per_stage": timings, "torch": torch.__version__}
        (tmp / "training.json").write_text(json.dumps(record, indent=2))

    final = out / "pipeline"
    _save_atomically(final, save_pipeline)
    for item in final.iterdir():
        target = out / item.name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        item.rename(target)
    final.rmdir()
    return out
