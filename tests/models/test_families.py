"""Model families and formats: SD 2.x v-prediction targets, single files with their config, SDXL refused, the
scheduler's clipping, chunked sampling, and the bundled model in plain diffusers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from safetensors.torch import save_file

from darkminer.attacks import get_attack
from darkminer.config import load_config
from darkminer.methods import ErasureRequest, get_method
from darkminer.models import ModelLoadError, load_model
from darkminer.models.runtime import ModelSource, resolve_device, resolve_dtype
from darkminer.testing import TINY_METHOD_OVERRIDES, tiny_model, tiny_model_dir, tiny_single_file


@pytest.fixture(scope="module")
def single_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(an original-layout single-file checkpoint of tiny_model(0), a pipeline directory of the same model)."""
    root = tmp_path_factory.mktemp("single")
    return tiny_single_file(root / "model.safetensors"), tiny_model_dir(root / "config", clip=False)


def test_training_target_follows_the_prediction_type() -> None:
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    assert torch.equal(tiny_model(family="sd1").training_target(x0, noise, t), noise)
    sd2 = tiny_model(family="sd2")
    assert sd2.prediction_type == "v_prediction"
    alpha_bar = sd2.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
    torch.testing.assert_close(sd2.training_target(x0, noise, t), expected)


# Every objective that regresses the UNet output on the noise of x_t; the others compare two UNet outputs.
_NOISE_REGRESSIONS = [("method", "dark_miner"), ("method", "ca"), ("method", "salun"), ("attack", "cce")]
_NOISE_REGRESSIONS += [("attack", "unlearn_diff")]
_TINY_ATTACKS = {
    "cce": dict(steps=2, length=2, batch_size=2, num_embeddings=2, num_images=2, eval_samples=2, generate_steps=2),
    "unlearn_diff": dict(steps=2, num_tokens=2, batch_size=2, eval_every=1, eval_samples=2, generate_steps=2),
}


@pytest.mark.parametrize(("kind", "name"), _NOISE_REGRESSIONS)
def test_every_noise_regression_uses_the_v_target(kind: str, name: str, tmp_path: Path, monkeypatch) -> None:
    model = tiny_model(family="sd2")
    calls = []
    target = model.training_target

    def spy(x0, noise, t):
        calls.append(len(x0))
        return target(x0, noise, t)

    monkeypatch.setattr(model, "training_target", spy)
    if kind == "method":
        entry = get_method(name)
        config = load_config(entry.config_class, None, TINY_METHOD_OVERRIDES[name])
        entry.method_class(config).erase(model, ErasureRequest(["star"]), tmp_path / "run")
    else:
        entry = get_attack(name)
        attack = entry.attack_class(entry.config_class(**_TINY_ATTACKS[name]))
        attack.run(model, concept="star", prompts=["a photo of a star"])
    assert calls, f"{kind} {name} never asked the model for its training target"


def test_scheduler_without_clip_sample_does_not_clip(tmp_path: Path) -> None:
    directory = tiny_model_dir(tmp_path / "sd", clip=False)
    config_file = directory / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config.pop("clip_sample")
    config["_class_name"] = "PNDMScheduler"  # what SD 1.x ships, whose config has no clip_sample of its own
    config_file.write_text(json.dumps(config))
    index = json.loads((directory / "model_index.json").read_text())
    (directory / "model_index.json").write_text(json.dumps({**index, "scheduler": ["diffusers", "PNDMScheduler"]}))
    model = load_model(directory)
    assert model.scheduler.config.clip_sample is False
    assert DDIMScheduler.from_config(model.scheduler.config).config.clip_sample is False


def test_single_file_with_its_config_loads_the_same_weights(single_file: tuple[Path, Path]) -> None:
    checkpoint, config_dir = single_file
    loaded, reference = load_model(checkpoint, model_config=config_dir, dtype=torch.bfloat16), tiny_model(0)
    assert loaded.dtype == torch.bfloat16 and loaded.name == str(checkpoint)
    for name in ("unet", "vae", "text_encoder"):
        mine, theirs = getattr(loaded, name).state_dict(), getattr(reference, name).state_dict()
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():
            torch.testing.assert_close(mine[key].float(), value.to(torch.bfloat16).float(), msg=key)


def test_single_file_config_must_be_a_pipeline_directory(single_file: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"--model-config .* \(no model_index.json\)"):
        load_model(single_file[0], model_config=tmp_path)


def test_sdxl_directory_is_refused_before_loading(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionXLPipeline", "text_encoder_2": ["transformers", "CLIPTextModel"]})
    )
    for name in ("tokenizer", "text_encoder", "vae", "unet", "scheduler"):
        (tmp_path / name).mkdir()  # empty: loading any of them would fail differently
    with pytest.raises(ModelLoadError, match="SDXL model; darkminer supports SD 1.x and SD 2.x"):
        load_model(tmp_path)


def test_sdxl_single_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sdxl.safetensors"
    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.ones(2)}, path)
    with pytest.raises(ModelLoadError, match="SDXL model"):
        load_model(path)


def test_chunked_sampling_and_vae_match_one_batch() -> None:
    model = tiny_model()
    whole = model.generate(["a cat", "a dog"], num_images_per_prompt=3, num_inference_steps=2, seed=4)
    model.batch_size = 2
    assert model.chunk_size == 2
    chunked = model.generate(["a cat", "a dog"], num_images_per_prompt=3, num_inference_steps=2, seed=4)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    images = whole * 2 - 1
    chunked_latents = model.encode_images(images, sample=False)
    model.batch_size = None
    torch.testing.assert_close(chunked_latents, model.encode_images(images, sample=False), atol=1e-5, rtol=1e-5)


def test_default_chunk_is_a_latent_budget() -> None:
    model = tiny_model()  # 8x8 latents: 8 * 64 * 64 / 64 images
    assert model.chunk_size == 512
    assert model.runtime() == {
        "device": "cpu",
        "dtype": "float32",
        "batch_size": 512,
        "compile": "off",
        "channels_last": False,
    }


def test_device_and_dtype_resolution() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else resolve_device("auto").type)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == resolve_dtype("bfloat16", torch.device("cpu"))
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="--dtype 'fp8'"):
        ModelSource(dtype="fp8")
    with pytest.raises(ValueError, match="--batch-size"):
        ModelSource(batch_size=0)


def test_bundled_model_works_in_plain_diffusers(tmp_path: Path) -> None:
    """No dtype argument: every component must load in float32, generate, and take an erase run's LoRA."""
    from darkminer.models.loading import _shapesworld_dir

    with _shapesworld_dir() as directory:
        pipe = StableDiffusionPipeline.from_pretrained(directory)
    assert {pipe.text_encoder.dtype, pipe.unet.dtype, pipe.vae.dtype} == {torch.float32}
    before = pipe("a red star", num_inference_steps=2, output_type="pt", generator=torch.manual_seed(0)).images
    model = load_model("shapesworld")
    entry = get_method("esd")
    config = load_config(entry.config_class, None, TINY_METHOD_OVERRIDES["esd"])
    entry.method_class(config).erase(model, ErasureRequest(["star"]), tmp_path / "run")
    pipe.load_lora_weights(tmp_path / "run")
    after = pipe("a red star", num_inference_steps=2, output_type="pt", generator=torch.manual_seed(0)).images
    assert before.shape == after.shape and not torch.equal(before, after)


@pytest.mark.parametrize("method", sorted(TINY_METHOD_OVERRIDES))
def test_every_method_erases_a_v_prediction_model_in_bf16(method: str, tmp_path: Path) -> None:
    model = tiny_model(family="sd2").to(dtype=torch.bfloat16)
    entry = get_method(method)
    config = load_config(entry.config_class, None, TINY_METHOD_OVERRIDES[method])
    alternative = "circle" if method == "all_but_one" else None
    entry.method_class(config).erase(model, ErasureRequest(["star"], alternative), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["runtime"]["dtype"] == "bfloat16"
    images = model.generate("a star", num_inference_steps=2)
    assert torch.isfinite(images).all()
