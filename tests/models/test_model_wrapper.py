"""DiffusionModel: text encoding, noise, images, sampling, and interop with diffusers."""

from __future__ import annotations

import pytest
import torch

from darkminer.models import DiffusionModel
from darkminer.testing import TINY_MAX_LENGTH, tiny_model

PROMPTS = ["a red circle", "a photo of a cat"]


def test_tiny_model_is_deterministic_and_frozen(model: DiffusionModel) -> None:
    other = tiny_model(seed=0)
    for name, module in model.modules.items():
        theirs = other.modules[name].state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in module.state_dict().items()), name
        assert not any(p.requires_grad for p in module.parameters())
        assert not module.training
    different = tiny_model(seed=1)
    assert not torch.equal(model.unet.conv_in.weight, different.unet.conv_in.weight)


def test_tokenize_pads_and_truncates(model: DiffusionModel) -> None:
    ids = model.tokenize(["a zebra, quickly!", "x " * 40])
    assert ids.shape == (2, TINY_MAX_LENGTH) and ids.dtype == torch.long
    assert model.max_length == TINY_MAX_LENGTH
    assert ids[0, 0] == model.tokenizer.bos_token_id
    assert ids[1, -1] == model.tokenizer.eos_token_id  # truncated, EOS kept
    # Any ASCII text tokenizes without unknown tokens.
    text = "the quick brown fox jumps over the lazy dog; 0123456789 .,!?"
    assert model.tokenizer.unk_token_id not in model.tokenizer(text, add_special_tokens=False).input_ids


def test_encode_prompt_equals_encoding_its_token_embeddings(model: DiffusionModel) -> None:
    by_string = model.encode_prompt(PROMPTS)
    assert by_string.shape == (2, TINY_MAX_LENGTH, 32)
    for row, prompt in enumerate(PROMPTS):
        ids = model.tokenize(prompt)[0]
        n = int((ids == model.tokenizer.eos_token_id).nonzero()[0]) - 1  # tokens between BOS and EOS
        embeds = model.token_embedding(ids[1 : 1 + n])[None]
        torch.testing.assert_close(model.encode_prompt(token_embeds=embeds)[0], by_string[row], atol=1e-5, rtol=0)
    # Padding with the pad token (= EOS for SD 1.x) reproduces the prompt too.
    padded = model.prompt_token_embeddings(PROMPTS, length=TINY_MAX_LENGTH - 2)
    torch.testing.assert_close(model.encode_prompt(token_embeds=padded), by_string, atol=1e-5, rtol=0)


def test_encode_prompt_is_differentiable_in_token_embeds(model: DiffusionModel) -> None:
    embeds = model.prompt_token_embeddings(PROMPTS, length=6).requires_grad_(True)
    weights = torch.randn(2, TINY_MAX_LENGTH, 32, generator=torch.Generator().manual_seed(0))
    (model.encode_prompt(token_embeds=embeds) * weights).sum().backward()
    assert embeds.grad is not None and torch.isfinite(embeds.grad).all()
    assert embeds.grad.abs().sum(dim=-1).gt(0).all()  # every token position receives gradient
    assert all(p.grad is None for p in model.text_encoder.parameters())


def test_prompt_token_embeddings_cuts_and_pads(model: DiffusionModel) -> None:
    embeds = model.prompt_token_embeddings(["a photo of a cat", "a"], length=3)
    table = model.token_embedding.weight
    pad = table[model.tokenizer.pad_token_id]
    assert embeds.shape == (2, 3, 32) and not embeds.requires_grad
    torch.testing.assert_close(embeds[1, 1], pad)
    torch.testing.assert_close(embeds[0, 0], table[model.tokenizer("a", add_special_tokens=False).input_ids[0]])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one"),
        ({"prompts": "a", "token_embeds": torch.zeros(1, 2, 32)}, "exactly one"),
        ({"token_embeds": torch.zeros(1, TINY_MAX_LENGTH - 1, 32)}, "at most 14"),
        ({"token_embeds": torch.zeros(1, 2, 5)}, "shape"),
    ],
)
def test_encode_prompt_rejects_bad_arguments(model: DiffusionModel, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        model.encode_prompt(**kwargs)


def test_prompt_token_embeddings_rejects_bad_length(model: DiffusionModel) -> None:
    with pytest.raises(ValueError, match="length"):
        model.prompt_token_embeddings("a", length=TINY_MAX_LENGTH - 1)


def test_unconditional_is_empty_prompt(model: DiffusionModel) -> None:
    uncond = model.encode_unconditional(3)
    assert uncond.shape == (3, TINY_MAX_LENGTH, 32)
    torch.testing.assert_close(uncond[2], model.encode_prompt("")[0])


def test_noise_and_prediction(model: DiffusionModel, probe) -> None:
    latents, timesteps, cond = probe
    noise = torch.randn_like(latents)
    noisy = model.add_noise(latents, noise, timesteps)
    alpha_bar = model.scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    torch.testing.assert_close(noisy, alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise)
    assert model.num_train_timesteps == 1000
    eps = model.predict_noise(noisy, timesteps, cond)
    assert eps.shape == latents.shape and torch.isfinite(eps).all()


def test_image_latent_round_trip_shapes(model: DiffusionModel) -> None:
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    mean = model.encode_images(images, sample=False)
    assert mean.shape == (2, *model.latent_shape)
    # the layout a file read gives back: convolutions round differently on another one (resume equivalence)
    assert mean.is_contiguous() and model.encode_images(images).is_contiguous()
    torch.testing.assert_close(model.encode_images(images, sample=False), mean)
    sampled = [model.encode_images(images, generator=torch.Generator().manual_seed(0)) for _ in range(2)]
    torch.testing.assert_close(sampled[0], sampled[1])
    decoded = model.decode_latents(mean)
    assert decoded.shape == images.shape and decoded.min() >= -1 and decoded.max() <= 1


def test_generate_is_seeded(model: DiffusionModel) -> None:
    kwargs = {"num_images_per_prompt": 2, "num_inference_steps": 3}
    first = model.generate(PROMPTS, seed=1, **kwargs)
    assert first.shape == (4, 3, 32, 32) and first.dtype == torch.float32
    assert first.min() >= 0 and first.max() <= 1 and not first.requires_grad
    torch.testing.assert_close(model.generate(PROMPTS, seed=1, **kwargs), first, atol=0, rtol=0)
    assert not torch.allclose(model.generate(PROMPTS, seed=2, **kwargs), first)
    # A generator replaces the seed; `cond` replaces the prompts.
    generated = model.generate(cond=model.encode_prompt(PROMPTS), generator=torch.Generator().manual_seed(1), **kwargs)
    torch.testing.assert_close(generated, first)


def test_generate_shares_latents_between_prompts(model: DiffusionModel) -> None:
    latents = model.prepare_latents(2, seed=5)
    from_latents = model.generate(PROMPTS, latents=latents, num_inference_steps=3)
    torch.testing.assert_close(from_latents, model.generate(PROMPTS, seed=5, num_inference_steps=3))
    swapped = model.generate(PROMPTS[::-1], latents=latents, num_inference_steps=3)
    assert not torch.allclose(swapped, from_latents)
    with pytest.raises(ValueError, match="latents"):
        model.generate(PROMPTS, latents=latents[:1], num_inference_steps=3)


def test_generate_one_unet_call_per_step(model: DiffusionModel) -> None:
    calls: list[int] = []
    handle = model.unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        model.generate(PROMPTS, num_images_per_prompt=2, num_inference_steps=3)
        assert calls == [8, 8, 8]  # (cond + uncond) x 4 images, once per step
        calls.clear()
        model.generate(PROMPTS, num_inference_steps=2, guidance_scale=1.0)
        assert calls == [2, 2]  # no guidance: no unconditional pass
    finally:
        handle.remove()


def test_generate_negative_cond_and_callback(model: DiffusionModel) -> None:
    default = model.generate(PROMPTS, num_inference_steps=3)
    negative = model.generate(PROMPTS, num_inference_steps=3, negative_cond=model.encode_unconditional(1))
    torch.testing.assert_close(negative, default)
    steps: list[int] = []

    def callback(m: DiffusionModel, step: int, timestep: torch.Tensor, kwargs: dict) -> dict:
        steps.append(step)
        return {"latents": torch.zeros_like(kwargs["latents"])}

    zeroed = model.generate(PROMPTS, num_inference_steps=3, callback_on_step_end=callback)
    assert steps == [0, 1, 2]
    torch.testing.assert_close(zeroed[0], zeroed[1])  # the last step's latents were replaced by zeros
    with pytest.raises(ValueError, match="exactly one"):
        model.generate(PROMPTS, cond=model.encode_prompt(PROMPTS))
    with pytest.warns(UserWarning, match="negative_cond"):
        model.generate(PROMPTS, num_inference_steps=1, guidance_scale=1.0, negative_cond=model.encode_unconditional(1))


def test_pipeline_shares_modules_and_samples_the_same(model: DiffusionModel) -> None:
    pipe = model.pipeline()
    assert pipe.unet is model.unet and pipe.text_encoder is model.text_encoder and pipe.vae is model.vae
    latents = model.prepare_latents(2, seed=0)
    ours = model.generate(PROMPTS, latents=latents, num_inference_steps=3, guidance_scale=4.0)
    theirs = pipe(PROMPTS, latents=latents, num_inference_steps=3, guidance_scale=4.0, output_type="pt").images
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_to_casts_modules(model: DiffusionModel) -> None:
    assert model.to(dtype=torch.float64) is model
    assert model.dtype == torch.float64 and model.device == torch.device("cpu")
    assert model.text_encoder.dtype == model.vae.dtype == model.clip.dtype == torch.float64
    assert model.encode_prompt("a").dtype == torch.float64
