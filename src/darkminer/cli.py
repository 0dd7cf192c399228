"""`darkminer`: the one command-line entry point.

Each sub-command parses its flags, then calls the library; errors that a user can fix (a bad path, an unknown
concept, a config key that does not exist) are printed as one line, not a traceback (set DARKMINER_DEBUG=1 to
see the traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from .config import ConfigError


class UsageError(ValueError):
    """A command-line input the user can fix."""


_MODEL_HELP = "'shapesworld' (default), a diffusers pipeline directory, a single-file .safetensors, or a hub id."


def _add_model_flags(p, *, model: bool = True) -> None:
    """--model, --model-config, --device, --dtype and --batch-size: which model, where, in what precision."""
    if model:
        p.add_argument("--model", default="shapesworld", help=_MODEL_HELP)
        p.add_argument(
            "--model-config",
            type=Path,
            help="For a single-file checkpoint: a diffusers pipeline (or config) directory of the same architecture, "
            "so that nothing is fetched from the hub.",
        )
    p.add_argument(
        "--device", default="auto", help="auto (default: CUDA, else MPS, else CPU) or a torch device (cpu, cuda:1)."
    )
    p.add_argument(
        "--dtype",
        default="auto",
        help="Weights' precision: auto (default: bf16 on a CUDA device that supports it, else fp32), fp32, bf16, "
        "fp16. LoRA parameters and losses stay fp32.",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help="Images per sampling / VAE chunk (default: as many as hold 8 latents of 64x64, e.g. 8 at SD 1.x 512 px).",
    )
    p.add_argument(
        "--compile",
        default="off",
        choices=["off", "unet", "blocks"],
        help="torch.compile the UNet: off (default), unet (whole forward) or blocks (each block; shorter compile).",
    )
    p.add_argument("--channels-last", action="store_true", help="Run the UNet in channels-last memory format.")


def _source(args) -> dict:
    """The ModelSource fields of the parsed model flags."""
    model_config = getattr(args, "model_config", None)
    return {
        "model": getattr(args, "model", "shapesworld"),
        "model_config": str(model_config) if model_config is not None else None,
        "device": args.device,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "compile": args.compile,
        "channels_last": args.channels_last,
    }


def _add_protocol_flags(p) -> None:
    """The flags of a real model's protocol ([`ProtocolOptions`]), shared by evaluate, attack and bench."""
    p.add_argument(
        "--prompts",
        type=Path,
        help="Real models: the concept's normal prompts, an I2P-format CSV (prompt, categories, "
        "evaluation_seed/evaluation_guidance or sd_seed/sd_guidance) or a text file of prompts.",
    )
    p.add_argument("--captions", type=Path, help="Real models: preservation captions (lines, or COCO JSON).")
    p.add_argument("--clip", type=Path, help="Real models: CLIP directory for CLIP-score, Q16 and zero-shot.")
    p.add_argument("--q16", type=Path, help="Real models: Q16 prompts (.safetensors) for I2P's other categories.")
    p.add_argument("--classes", type=Path, help="Real models: class list (one per line) for objects and styles.")
    p.add_argument("--concept-kind", choices=["object", "style"], help="Real models: a concept outside I2P.")
    p.add_argument("--reference-images", type=Path, help="Real models: reference images for FID.")
    p.add_argument("--max-prompts", type=int, help="Real models: use only the first N normal prompts.")
    p.add_argument(
        "--attack-prompts", type=int, default=100, help="Real models: prompts P4D/UnlearnDiff start from (100)."
    )
    p.add_argument("--attack-pool", type=int, help="CCE's images: the detector's top N (real: 1000; ShapesWorld: 32).")


def _protocol(args) -> dict:
    """The ProtocolOptions fields of the parsed protocol flags."""
    paths = ("prompts", "captions", "clip", "q16", "classes", "reference_images")
    return {
        **{name: None if getattr(args, name) is None else str(getattr(args, name)) for name in paths},
        "concept_kind": args.concept_kind,
        "max_prompts": args.max_prompts,
        "attack_prompts": args.attack_prompts,
        "attack_pool": args.attack_pool,
    }


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="Generate images from prompts, optionally with an erasure adapter.")
    _add_model_flags(p)
    p.add_argument("--prompt", action="append", default=[], help="A prompt; repeat for several.")
    p.add_argument("--prompts", type=Path, help="A text file with one prompt per line.")
    p.add_argument("-n", "--num-images", type=int, default=8, help="Images per prompt (default 8).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the initial noise (default 0).")
    p.add_argument("--output-dir", type=Path, default=Path("outputs/generate"), help="Where PNGs and grid.png go.")
    p.add_argument("--adapter", type=Path, help="A run directory or adapter directory written by `darkminer erase`.")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25).")
    p.add_argument("--guidance-scale", type=float, default=7.5, help="Classifier-free guidance scale (default 7.5).")
    p.set_defaults(func=_run_generate)


def _read_prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts is not None:
        if not args.prompts.is_file():
            raise UsageError(f"--prompts {args.prompts}: no such file.")
        prompts += [line.strip() for line in args.prompts.read_text().splitlines() if line.strip()]
    if not prompts:
        raise UsageError("No prompt given: pass --prompt TEXT (repeatable) or --prompts FILE.")
    return prompts


def _run_generate(args) -> int:
    from .commands.generate import GenerateConfig, generate_to_dir

    config = GenerateConfig(
        **_source(args),
        prompts=_read_prompts(args),
        num_images=args.num_images,
        seed=args.seed,
        output_dir=str(args.output_dir),
        adapter=str(args.adapter) if args.adapter else None,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
    )
    grid = generate_to_dir(config)
    print(f"Wrote {len(config.prompts) * config.num_images} images and {grid}")
    return 0


def _add_toy(sub) -> None:
    toy = sub.add_parser("toy", help="ShapesWorld: train the bundled model, or benchmark it.")
    toy_sub = toy.add_subparsers(dest="toy_command", required=True)
    train = toy_sub.add_parser("train", help="Train every ShapesWorld recipe (resumable per stage).")
    train.add_argument("--output-dir", type=Path, required=True, help="Where the pipeline directory is written.")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--quick", action="store_true", help="A few steps of every recipe (tests, smoke checks).")
    train.add_argument("--config", type=Path, help="YAML file of ToyTrainConfig fields.")
    train.add_argument("overrides", nargs="*", help="Dotted overrides, e.g. unet.steps=3000.")
    train.set_defaults(func=_run_toy_train)
    ev = toy_sub.add_parser("eval", help="Benchmark a ShapesWorld model: classifier, CLIP, prompt following, speed.")
    ev.add_argument("--model", default="shapesworld", help="'shapesworld' or a ShapesWorld pipeline directory.")
    ev.add_argument("--images-per-prompt", type=int, default=2, help="Images per held-out prompt (default 2).")
    ev.add_argument("--output", type=Path, default=Path("docs/shapesworld.md"), help="Markdown report path.")
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(func=_run_toy_eval)


def _run_toy_train(args) -> int:
    from .config import load_config
    from .toy.train import ToyTrainConfig, train_shapesworld

    if args.quick:
        config = ToyTrainConfig.quick(str(args.output_dir), args.seed)
    else:
        config = load_config(
            ToyTrainConfig, args.config, args.overrides, output_dir=str(args.output_dir), seed=args.seed
        )
    out = train_shapesworld(config)
    print(f"ShapesWorld pipeline written to {out}")
    return 0


def _run_toy_eval(args) -> int:
    from .toy.evaluate import evaluate_shapesworld

    report = evaluate_shapesworld(args.model, args.output, images_per_prompt=args.images_per_prompt, seed=args.seed)
    print(report)
    return 0


def _add_erase(sub) -> None:
    p = sub.add_parser("erase", help="Erase concepts from a model with a registered method (resumable).")
    _add_model_flags(p)
    p.add_argument("--method", default="dark_miner", help="Method key (default dark_miner); see `darkminer methods`.")
    p.add_argument("--concept", action="append", required=True, help="Concept to erase; repeat for several.")
    p.add_argument("--alternative", help="All but One: the concept the target turns into.")
    p.add_argument("--output-dir", type=Path, required=True, help="Run directory; re-run the same command to resume.")
    p.add_argument("--config", type=Path, help="YAML file of the method's config (see configs/).")
    p.add_argument("--max-loops", type=int, help="Dark Miner: upper bound on loops (same as max_loops=N).")
    p.add_argument(
        "--merge", action="store_true", help="Also write a full pipeline with the adapter merged (merged/)."
    )
    p.add_argument(
        "--clip", help="CLIP model (a local directory with safetensors weights, or a hub id) for models without one."
    )
    p.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="Recompute UNet activations in the backward pass: less GPU memory, slower steps.",
    )
    p.add_argument("--no-report", action="store_true", help="Skip report.md/report.html and their grids.")
    p.add_argument("overrides", nargs="*", help="Dotted config overrides, e.g. mining.steps=300 verify.tau=0.25.")
    p.set_defaults(func=_run_erase)


def _run_erase(args) -> int:
    from .commands.erase import EraseJob, run_erase
    from .methods import get_method

    overrides = list(args.overrides)
    if args.max_loops is not None:
        fields = {f.name for f in dataclasses.fields(get_method(args.method).config_class)}
        if "max_loops" not in fields:
            print(f"darkminer erase: warning: --max-loops is ignored by method {args.method!r}.", file=sys.stderr)
        else:
            overrides.append(f"max_loops={args.max_loops}")
    job = EraseJob(
        **_source(args),
        method=args.method,
        concepts=args.concept,
        output_dir=str(args.output_dir),
        alternative=args.alternative,
        config_file=str(args.config) if args.config else None,
        overrides=overrides,
        merge=args.merge,
        clip=args.clip,
        report=not args.no_report,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    result, _, _ = run_erase(job)
    print(f"Adapter written to {result.output_dir} ({result.summary})")
    if job.report:
        print(f"Report: {result.output_dir / 'report.md'}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="Erase a ShapesWorld concept with Dark Miner and print a before/after table.")
    p.add_argument("--concept", default="star", help="ShapesWorld concept (default star).")
    p.add_argument("--output-dir", type=Path, default=Path("runs/demo"), help="Run directory (default runs/demo).")
    p.add_argument("--images-per-prompt", type=int, default=4, help="Images per evaluation prompt (default 4).")
    p.add_argument("--method", default="dark_miner", help="Method with a ShapesWorld preset (default dark_miner).")
    p.add_argument("--alternative", help="All but One: the concept the target turns into (e.g. circle).")
    _add_model_flags(p, model=False)
    p.add_argument("overrides", nargs="*", help="Dotted overrides of the preset.")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from .commands.demo import run_demo
    from .models.runtime import ModelSource

    print(
        run_demo(
            args.concept,
            args.output_dir,
            args.images_per_prompt,
            list(args.overrides),
            method=args.method,
            alternative=args.alternative,
            source=ModelSource(**_source(args)),
        )
    )
    return 0


def _add_methods(sub) -> None:
    p = sub.add_parser("methods", help="List the registered erasure methods and their config fields.")
    p.set_defaults(func=_run_methods)


def _run_methods(args) -> int:
    from .config import field_help
    from .methods import list_methods

    for entry in list_methods():
        print(f"{entry.name}: {entry.summary}")
        for name, text in field_help(entry.config_class).items():
            print(f"    {name}: {text}")
    return 0


def _add_evaluate(sub) -> None:
    for name, help_text in (
        ("evaluate", "One Table-1 row: Ratio, Score, CLIP, FID and ASR per attack, as JSON + Markdown."),
        ("attack", "Run one attack against a (possibly erased) model: adversarial prompts, images, ASR."),
    ):
        p = sub.add_parser(name, help=help_text)
        _add_model_flags(p)
        p.add_argument("--adapter", type=Path, help="Run directory of `darkminer erase` (omit: the original model).")
        p.add_argument("--concept", required=True, help="The concept to measure or bring back.")
        p.add_argument("--output-dir", type=Path, required=True, help="Where results.json, report.md, grids go.")
        p.add_argument("--images-per-prompt", type=int, default=4, help="Images per normal prompt (paper: 10).")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--sampling-steps", type=int, default=25, help="DDIM steps of every generated image.")
        p.add_argument(
            "--ban-concept-words",
            action="store_true",
            help="Forbid the concept's own words in discrete adversarial prompts.",
        )
        _add_protocol_flags(p)
        p.add_argument("--show-unsafe", action="store_true", help="Do not pixelate flagged images in the report.")
        p.add_argument(
            "--attack-images",
            type=int,
            default=16,
            help="Images each attack's ASR is measured on, at least (each output draws ceil(N / outputs)).",
        )
        if name == "evaluate":
            p.add_argument("--attacks", nargs="*", default=[], help="Attacks to run (see `darkminer attacks`).")
        else:
            p.add_argument("--attack", required=True, help="cce | p4d | unlearn_diff | ring_a_bell")
        p.add_argument("overrides", nargs="*", help="Attack overrides as <attack>.<field>=value, e.g. cce.steps=50.")
        p.set_defaults(func=_run_evaluate)
    p = sub.add_parser("attacks", help="List the registered attacks and their config fields.")
    p.set_defaults(func=_run_attacks)


def _run_evaluate(args) -> int:
    from .commands.evaluate import EvaluateJob, evaluate, table_row

    attacks = args.attacks if args.command == "evaluate" else [args.attack]
    job = EvaluateJob(
        **_source(args),
        concept=args.concept,
        output_dir=str(args.output_dir),
        adapter=str(args.adapter) if args.adapter else None,
        attacks=attacks,
        attack_overrides=list(args.overrides),
        images_per_prompt=args.images_per_prompt,
        seed=args.seed,
        erase_metrics=args.command == "evaluate",
        ban_concept_words=args.ban_concept_words,
        sampling_steps=args.sampling_steps,
        **_protocol(args),
        show_unsafe=args.show_unsafe,
        attack_images=args.attack_images,
    )
    results = evaluate(job)
    if job.prompts is not None:
        from .utils.distributed import Workers

        if not Workers().main:
            return 0
        shown = {k: results[k] for k in ("ratio", "score", "clip_score", "fid", "asr", "unprompted")}
        print(shown)
    else:
        print(table_row(results))
    print(f"Results: {args.output_dir / 'results.json'}; report: {args.output_dir / 'report.md'}")
    return 0


def _run_attacks(args) -> int:
    from .attacks import list_attacks
    from .config import field_help

    for entry in list_attacks():
        print(f"{entry.name}: {entry.summary}")
        for name, text in field_help(entry.config_class).items():
            print(f"    {name}: {text}")
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="Every method x concepts x attacks, one Table-1-shaped report.")
    p.add_argument(
        "--suite",
        default="shapesworld",
        choices=["shapesworld", "protocol"],
        help="shapesworld (the bundled model and its presets), or protocol (--model judged under --prompts ...).",
    )
    p.add_argument("--quick", action="store_true", help="A few steps of everything: checks the table runs.")
    p.add_argument("--methods", nargs="*", default=[], help="Methods (default: every registered one).")
    p.add_argument("--concepts", nargs="*", default=[], help="Concepts (ShapesWorld default: star striped red).")
    p.add_argument("--attacks", nargs="*", default=[], help="Attacks (default: every registered one).")
    p.add_argument("--runs-dir", default="runs/bench", help="Run directories and cached cells (resumable).")
    p.add_argument("--output", help="Markdown table (docs/results/shapesworld.md, or <runs-dir>/bench.md).")
    p.add_argument("--alternative", help="protocol: All but One's alternative concept.")
    p.add_argument(
        "--method-config",
        action="append",
        default=[],
        metavar="METHOD=FILE",
        help="protocol: a method's YAML config (repeatable; default: the paper's settings).",
    )
    _add_protocol_flags(p)
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument(
        "--attack-images",
        type=int,
        default=16,
        help="Images each attack's ASR is measured on, at least (default 16).",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[],
        metavar="SEED",
        help="Erase and evaluate every cell once per seed; the table prints mean ± standard deviation "
        "(default: one run at each method's config seed).",
    )
    _add_model_flags(p)
    p.add_argument(
        "overrides",
        nargs="*",
        help="Overrides as <attack>.<field>=value (e.g. p4d.steps=50) or <method>.<field>=value, on top of the "
        "method's preset (e.g. dark_miner.max_loops=24).",
    )
    p.set_defaults(func=_run_bench)


def _split_bench_overrides(overrides: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """The bench's overrides by owner: {method: its fields' overrides} for those that start with a method's name,
    and the rest (attack overrides) as given."""
    from .attacks import list_attacks
    from .config import ConfigError
    from .methods import list_methods

    methods, attacks = {m.name for m in list_methods()}, {a.name for a in list_attacks()}
    by_method: dict[str, list[str]] = {}
    by_attack = []
    for override in overrides:
        owner, _, rest = override.partition(".")
        if owner not in methods | attacks or "=" not in rest:
            raise ConfigError(
                f"override {override!r}: write <method>.<field>=value or <attack>.<field>=value; methods: "
                f"{', '.join(sorted(methods))}; attacks: {', '.join(sorted(attacks))}."
            )
        if owner in methods:
            by_method.setdefault(owner, []).append(rest)
        else:
            by_attack.append(override)
    return by_method, by_attack


def _run_bench(args) -> int:
    from .commands.bench import BenchConfig, run_bench

    method_overrides, attack_overrides = _split_bench_overrides(args.overrides)
    config = BenchConfig(
        **_source(args),
        suite=args.suite,
        methods=args.methods,
        concepts=args.concepts,
        attacks=args.attacks,
        runs_dir=args.runs_dir,
        output=args.output,
        quick=args.quick,
        images_per_prompt=args.images_per_prompt,
        attack_images=args.attack_images,
        seeds=args.seeds,
        extra_method_overrides=method_overrides,
        extra_attack_overrides=attack_overrides,
        alternative=args.alternative,
        method_configs=_method_configs(args.method_config),
        **_protocol(args),
    )
    print(f"Wrote {run_bench(config, 'darkminer ' + ' '.join(sys.argv[1:]))}")
    return 0


def _method_configs(pairs: list[str]) -> dict[str, str]:
    configs = {}
    for pair in pairs:
        method, sep, path = pair.partition("=")
        if not sep or not method or not path:
            raise UsageError(f"--method-config {pair!r} must be METHOD=FILE, e.g. dark_miner=configs/mine.yaml.")
        configs[method] = path
    return configs


def _add_speed(sub) -> None:
    p = sub.add_parser("speed", help="Time Dark Miner's stages against the bare model passes they need.")
    p.add_argument(
        "--architecture",
        default="tiny",
        help="Random-weight model built in memory: tiny (default), sd14 or sd21; ignored with --model.",
    )
    p.add_argument("--model", help="Measure this model instead (" + _MODEL_HELP + ")")
    p.add_argument("--model-config", type=Path, help="For a single-file --model: its diffusers config directory.")
    _add_model_flags(p, model=False)
    p.add_argument("--steps", type=int, nargs=2, default=[10, 40], help="The two step counts each stage is timed at.")
    p.add_argument("--repeats", type=int, default=5, help="Timings per figure; the fastest is kept (default 5).")
    p.add_argument(
        "--switches",
        nargs="*",
        default=[],
        help="Also time these speed switches off and on, side by side: one_call, one_batch, channels_last, compile.",
    )
    p.add_argument("--json", type=Path, help="Also write the figures to this JSON file.")
    p.set_defaults(func=_run_speed)


def _run_speed(args) -> int:
    from .commands.speed import SpeedConfig, format_speed, measure_speed
    from .config import write_json

    source = _source(args)
    source["model"] = args.model or "shapesworld"
    config = SpeedConfig(
        **source,
        architecture=None if args.model else args.architecture,
        steps=tuple(args.steps),
        repeats=args.repeats,
        switches=args.switches,
    )
    figures = measure_speed(config)
    print(format_speed(figures))
    if args.json:
        write_json(args.json, figures)
        print(f"Figures: {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="darkminer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_erase(sub)
    _add_demo(sub)
    _add_methods(sub)
    _add_evaluate(sub)
    _add_bench(sub)
    _add_speed(sub)
    _add_toy(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .models import LoraLoadError, ModelLoadError
    from .training.checkpoint import NonFiniteLossError, RunConflictError, RunLockedError

    args = build_parser().parse_args(argv)
    # What a user can cause and fix: one line and exit 2. Anything else is a bug and keeps its traceback.
    user_errors = (
        UsageError,
        ConfigError,
        ModelLoadError,
        LoraLoadError,
        FileNotFoundError,
        NotADirectoryError,
        FileExistsError,
        PermissionError,
        RunConflictError,
        RunLockedError,
        NonFiniteLossError,
        NotImplementedError,
    )
    try:
        return args.func(args)
    except user_errors as err:
        if os.environ.get("DARKMINER_DEBUG"):
            raise
        print(f"darkminer {args.command}: error: {err}", file=sys.stderr)
        return 2
    except torch_oom() as err:
        if os.environ.get("DARKMINER_DEBUG"):
            raise
        print(
            f"darkminer {args.command}: error: out of memory ({str(err).splitlines()[0]}); lower --batch-size (images "
            "per chunk), or the method's batch_size, or pass --gradient-checkpointing to erase.",
            file=sys.stderr,
        )
        return 2


def torch_oom() -> tuple[type[BaseException], ...]:
    """The exceptions that mean a device ran out of memory."""
    import torch

    return (torch.OutOfMemoryError, MemoryError)


if __name__ == "__main__":
    sys.exit(main())
