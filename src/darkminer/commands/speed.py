"""`darkminer speed`: how fast Dark Miner's stages run on this machine, against the bare model passes they need.

Each stage is timed as Dark Miner runs it (its own `_mine`, `_circumvent` and `_verify`, on the paper's settings of
App. A except the step counts), at two step counts whose difference gives the seconds per step without the set-up.
The floor is the model passes a step needs, and nothing else, timed the same way: for a mining step the text encoder
on c (in token space, A1) and one UNet forward and backward at batch k (Eq. 5); for a circumventing step one UNet
forward and backward over the frozen targets' and the adapted predictions' rows together (`circumvent.one_call`,
the default; else one forward without gradient and one forward and backward, Eq. 7-8); for sampling the guided UNet
calls of DDIM. The ratio is what the implementation adds around the model. Achieved TFLOP/s come from torch's FLOP
counter on one step. The projection multiplies the per-step figures out to a paper-setting run: `loops` loops of 1000
mining and 1000 circumventing steps, one verification each, and the pool. `switches` times each speed switch off
and on, side by side.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import ConfigError
from ..methods.dark_miner.config import DarkMinerConfig
from ..methods.dark_miner.method import DarkMiner, MinedEmbedding
from ..models import DiffusionModel, add_lora, attention_value_modules, disable_lora
from ..models.runtime import ModelSource, resolve_device, resolve_dtype
from ..testing import random_model

ARCHITECTURES = ("tiny", "sd14", "sd21")
SWITCHES = ("one_call", "one_batch", "channels_last", "compile")
"""The speed switches `--switches` times side by side: circumventing's `one_call`, verification's `one_batch`, and
the UNet in channels-last format or compiled (each timed on circumventing steps)."""


@dataclass(kw_only=True)
class SpeedConfig(ModelSource):
    """What `darkminer speed` measures: a random-weight `architecture`, or the model of the [`ModelSource`] fields."""

    architecture: str | None = field(
        default="tiny",
        metadata={"help": "Random-weight model built in memory: tiny, sd14 or sd21 (None: load `model`)."},
    )
    steps: tuple[int, int] = field(
        default=(10, 40), metadata={"help": "The two step counts each stage is timed at; their difference is used."}
    )
    repeats: int = field(
        default=5, metadata={"min": 1, "help": "Timings per figure; the fastest is kept (others were interrupted)."}
    )
    sampling_steps: int = field(default=25, metadata={"min": 1, "help": "DDIM steps of sampling and verification."})
    sampling_images: int = field(default=4, metadata={"min": 1, "help": "Images sampled to time sampling."})
    loops: int = field(default=48, metadata={"min": 1, "help": "Loops of the projected run (the paper's nudity: 48)."})
    switches: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Speed switches to time off and on, side by side: one_call, one_batch, channels_last, compile."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        for name in self.switches:
            if name not in SWITCHES:
                raise ConfigError(f"--switches {name!r} is not one of {', '.join(SWITCHES)}.")
        if self.architecture is not None and self.architecture not in ARCHITECTURES:
            raise ConfigError(f"--architecture {self.architecture!r} is not one of {', '.join(ARCHITECTURES)}.")
        low, high = self.steps
        if not 1 <= low < high:
            raise ConfigError(f"steps={self.steps!r} must be two step counts, 1 <= first < second.")


def _seconds(run: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _per_step_pair(timed, floor, steps: tuple[int, int], device: torch.device, repeats: int) -> tuple[float, float]:
    """Seconds per step of `timed(n)` and of `floor(n)`, each from its times at two step counts (after a warm-up).

    The two are timed in turn, `repeats` times, and the fastest time of each is kept: on a shared machine a slower one
    was interrupted, and taking turns exposes both to the same conditions. Raises ConfigError when the higher step
    count did not take longer, where the difference would give a time per step of zero or less.
    """
    timed(1)
    floor(1)
    low, high = steps
    best = {}
    for _ in range(repeats):
        for name, run in (("timed", timed), ("floor", floor)):
            for n in (low, high):
                seconds = _seconds(lambda run=run, n=n: run(n), device)
                best[name, n] = min(best.get((name, n), seconds), seconds)
    for name in ("timed", "floor"):
        if best[name, high] <= best[name, low]:
            raise ConfigError(
                f"{high} steps timed no slower than {low} ({best[name, high]:.4f} s against {best[name, low]:.4f} s), "
                "so no time per step can be read from them: the machine was busy or the steps too few; widen --steps "
                "or raise --repeats."
            )
    return tuple((best[name, high] - best[name, low]) / (high - low) for name in ("timed", "floor"))


def _flops(run: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def _load(config: SpeedConfig) -> DiffusionModel:
    if config.architecture is None:
        return config.load()
    device = resolve_device(config.device)
    model = random_model(config.architecture).to(device=device, dtype=resolve_dtype(config.dtype, device))
    model.batch_size = config.batch_size
    return model.speed_up(compile=config.compile, channels_last=config.channels_last)


def measure_speed(config: SpeedConfig) -> dict:
    """Time Dark Miner's stages and their UNet floors on one model; returns the figures `darkminer speed` prints.

    Returns:
        `dict` with the model, device and dtype, and per stage (`mining`, `circumventing`, `sampling` per image, and
        `verification` when the model has a CLIP) the seconds per step, the floor, their ratio and TFLOP/s; and
        `projected_hours`, the paper-setting run at these speeds.
    """
    model = _load(config)
    device = model.device
    paper = DarkMinerConfig()  # App. A; L=16 tokens, fewer where the model's prompts are shorter (tiny)
    paper.mining = dataclasses.replace(paper.mining, length=min(paper.mining.length, model.max_length - 2))
    miner = DarkMiner(paper)
    k, b = paper.mining.images_per_loop, paper.circumvent.batch_size
    generator = torch.Generator().manual_seed(0)
    pool_latents = torch.randn(paper.pool.size, *model.latent_shape, generator=generator)
    figures: dict = {"model": model.name, **model.runtime(), "steps": list(config.steps)}

    # ---- mining (Eq. 5): Dark Miner's own stage, against one UNet forward+backward at batch k per step
    def mine(n: int):
        miner.config = dataclasses.replace(paper, mining=dataclasses.replace(paper.mining, steps=n))
        return miner._mine(model, "nudity", pool_latents, generator, None, 0)

    start = miner._initial_embedding(model, "nudity", generator).to(device)
    x_t = torch.randn(k, *model.latent_shape, generator=generator).to(device, model.dtype)
    t = torch.full((k,), 500, device=device)

    def mining_floor(n: int):
        for _ in range(n):  # c through the frozen text encoder (token space, A1), then the UNet, and back
            cond = miner._condition(model, start.clone().requires_grad_(True)).expand(k, -1, -1)
            model.predict_noise(x_t, t, cond).float().square().mean().backward()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        add_lora(model.unet, attention_value_modules(model.unet, paper.lora.targets), rank=paper.lora.rank)
    figures["mining"] = _stage(mine, mining_floor, lambda: mine(1), config, device, "mining step (batch k=3)")

    # ---- circumventing (Eq. 7-8): Dark Miner's own stage, against its two UNet calls per step
    embedding = miner._initial_embedding(model, "nudity", generator).to(device)
    latents = torch.randn(paper.circumvent.images_per_embedding, *model.latent_shape, generator=generator)
    pool = [MinedEmbedding("nudity", 0, embedding.cpu(), latents)]
    terms = 1 + len(paper.circumvent.preserve)  # c, then each preserved condition

    def circumvent(n: int):
        miner.config = dataclasses.replace(paper, circumvent=dataclasses.replace(paper.circumvent, steps=n))
        return miner._circumvent(model, pool, generator, None, 0)

    params = [p for name, p in model.unet.named_parameters() if "lora_" in name]
    rows = (2 * terms - 1) * b  # the frozen targets' rows, then the adapted ones
    x_c = torch.randn(rows, *model.latent_shape, generator=generator).to(device, model.dtype)
    t_c = torch.full((rows,), 500, device=device)
    cond_c = model.encode_prompt("a photo").repeat(rows, 1, 1).detach()  # concatenated, as the step's is
    frozen = (terms - 1) * b

    def circumventing_floor(n: int):
        for p in params:
            p.requires_grad_(True)
        for _ in range(n):
            if paper.circumvent.one_call:  # one forward and backward over every row
                model.predict_noise(x_c, t_c, cond_c).float().square().mean().backward()
                continue
            with torch.no_grad(), disable_lora(model.unet):
                model.predict_noise(x_c[:frozen], t_c[:frozen], cond_c[:frozen])
            model.predict_noise(x_c[frozen:], t_c[frozen:], cond_c[frozen:]).float().square().mean().backward()

    figures["circumventing"] = _stage(
        circumvent, circumventing_floor, lambda: circumvent(1), config, device, "circumventing step (batch 1)"
    )

    # ---- sampling, per image, against the bare guided UNet calls of DDIM
    n_img, steps = config.sampling_images, config.sampling_steps

    def sample():
        with torch.no_grad():
            model.generate(["a photo"] * n_img, num_inference_steps=steps)

    sample_x = torch.randn(2 * n_img, *model.latent_shape, generator=generator).to(device, model.dtype)
    sample_cond = model.encode_prompt("a photo").expand(2 * n_img, -1, -1).detach()

    def sampling_floor():
        with torch.no_grad():
            for _ in range(steps):
                model.predict_noise(sample_x, torch.full((2 * n_img,), 500, device=device), sample_cond)

    sample()
    seconds = min(_seconds(sample, device) for _ in range(config.repeats)) / n_img
    floor = min(_seconds(sampling_floor, device) for _ in range(config.repeats)) / n_img
    figures["sampling"] = {
        "what": f"one image, {steps} DDIM steps with guidance",
        "seconds": seconds,
        "floor_seconds": floor,
        "ratio": seconds / floor,
        "tflops": _flops(sample) / n_img / seconds / 1e12,
    }

    # ---- verification (Eq. 6): x_c and x_r pairs, and CLIP features, once per loop
    if model.clip is not None:
        pool_images = torch.rand(paper.pool.size, 3, model.vae.config.sample_size, model.vae.config.sample_size)
        miner.config = paper
        picks = torch.arange(k)
        verify = lambda: miner._verify(model, embedding, pool_images, picks, generator)  # noqa: E731
        verify()
        figures["verification"] = {"what": "one verification (4 pairs)", "seconds": _seconds(verify, device)}

    per_loop = (
        paper.mining.steps * figures["mining"]["seconds"]
        + paper.circumvent.steps * figures["circumventing"]["seconds"]
        + figures.get("verification", {}).get("seconds", 2 * paper.verify.pairs * seconds)
        + paper.circumvent.images_per_embedding * seconds
    )
    figures["projected_hours"] = (config.loops * per_loop + paper.pool.size * seconds) / 3600
    figures["projection"] = (
        f"{config.loops} loops x ({paper.mining.steps} mining + {paper.circumvent.steps} circumventing steps, one "
        f"verification, {paper.circumvent.images_per_embedding} images) + a pool of {paper.pool.size} images"
    )
    if config.switches:
        figures["switches"] = _switch_gains(config, model, miner, paper, pool, generator)
    return figures


def _switch_gains(config: SpeedConfig, model: DiffusionModel, miner, paper, pool, generator) -> dict:
    """Each switch's stage timed with it off and on, in turns (`_per_step_pair`); `speedup` is off / on."""
    device = model.device

    def circumvent(one_call: bool = paper.circumvent.one_call):  # the other switches: on the default path
        def run(n: int):
            circumventing = dataclasses.replace(paper.circumvent, steps=n, one_call=one_call)
            miner.config = dataclasses.replace(paper, circumvent=circumventing)
            return miner._circumvent(model, pool, generator, None, 0)

        return run

    def with_unet(unet, run):
        def swapped(n: int):
            kept, model.unet = model.unet, unet
            try:
                return run(n)
            finally:
                model.unet = kept

        return swapped

    def in_format(memory_format, run):
        def formatted(n: int):
            model.unet.to(memory_format=memory_format)
            return run(n)

        return formatted

    pool_images = torch.rand(4, 3, model.vae.config.sample_size, model.vae.config.sample_size)
    embedding, picks = pool[0].embedding.to(device), torch.arange(2)

    def verify(one_batch: bool):
        miner.config = dataclasses.replace(paper, verify=dataclasses.replace(paper.verify, one_batch=one_batch))
        return lambda: miner._verify(model, embedding, pool_images, picks, generator)

    gains = {}
    for name in config.switches:
        stage = "circumventing step"
        if name == "one_call":
            on, off = _per_step_pair(circumvent(True), circumvent(False), config.steps, device, config.repeats)
        elif name == "channels_last":
            on, off = _per_step_pair(
                in_format(torch.channels_last, circumvent()),
                in_format(torch.contiguous_format, circumvent()),
                config.steps,
                device,
                config.repeats,
            )
            model.unet.to(memory_format=torch.channels_last if model.channels_last else torch.contiguous_format)
        elif name == "compile":
            compiled = torch.compile(model.unet)
            # two calls: a compiled graph ignores one_call's row-mask hooks (Dark Miner makes two calls there too)
            on, off = _per_step_pair(
                with_unet(compiled, circumvent(False)), circumvent(False), config.steps, device, config.repeats
            )
        elif model.clip is not None:  # one_batch: a whole verification, not a step
            stage = "one verification"
            verify(True)()
            on = min(_seconds(verify(True), device) for _ in range(config.repeats))
            off = min(_seconds(verify(False), device) for _ in range(config.repeats))
        else:
            continue
        gains[name] = {"stage": stage, "off_seconds": off, "on_seconds": on, "speedup": off / on}
    return gains


def _stage(timed, floor, one_step, config: SpeedConfig, device, what: str) -> dict:
    seconds, floor_seconds = _per_step_pair(timed, floor, config.steps, device, config.repeats)
    return {
        "what": what,
        "seconds": seconds,
        "floor_seconds": floor_seconds,
        "ratio": seconds / floor_seconds,
        "tflops": _flops(one_step) / seconds / 1e12,
    }


def format_speed(figures: dict) -> str:
    """The figures as the table `darkminer speed` prints."""
    lines = [
        f"model {figures['model']}, device {figures['device']}, dtype {figures['dtype']}; per-step times from "
        f"{figures['steps'][0]} and {figures['steps'][1]} steps, differenced",
        "",
        f"| {'stage':38} | s / step | floor s | ratio | TFLOP/s |",
        f"|{'-' * 40}|----------|---------|-------|---------|",
    ]
    for stage in ("mining", "circumventing", "sampling"):
        row = figures[stage]
        lines.append(
            f"| {row['what']:38} | {row['seconds']:8.4f} | {row['floor_seconds']:7.4f} | {row['ratio']:5.2f} | "
            f"{row['tflops']:7.3f} |"
        )
    if "verification" in figures:
        lines.append(f"| {figures['verification']['what']:38} | {figures['verification']['seconds']:8.4f} |")
    lines += ["", f"projected paper-setting run: {figures['projected_hours']:.2f} h ({figures['projection']})"]
    if figures.get("switches"):
        lines += ["", "| switch | timed on | off s | on s | speed-up |", "|---|---|---|---|---|"]
        for name, row in figures["switches"].items():
            lines.append(
                f"| {name} | {row['stage']} | {row['off_seconds']:.4f} | {row['on_seconds']:.4f} | "
                f"{row['speedup']:.2f}x |"
            )
    return "\n".join(lines)


__all__ = ["ARCHITECTURES", "SWITCHES", "SpeedConfig", "format_speed", "measure_speed"]
