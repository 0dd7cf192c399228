"""Replay the embeddings a Dark Miner run circumvented on the model with and without its adapters.

For each entry of the run's last checkpoint (one mined c per circumvented loop, after the concept's texts where
`circumvent.prompt_steps` put them in the pool first, A24: those are marked `text`), draws `--images` images from c on
the erased model (the run's final adapters) and on the original (adapters off), from the same noise and with
verification's sampler settings, and prints the share the world's detector flags as the concept. An embedding that
draws the concept only with the adapters on was mined against the adapters, not the original: with
`circumvent.images_from=original` its circumventing images do not show the concept (docs/design.md, A13).
`--attack-dir` replays an attack's learned embeddings after them (CCE's `embeddings.safetensors`, token space), with
each one's token norms beside the run's: an attack that draws the concept only on the erased model found an input
the erasure created, not one the original already drew the concept from.

    python scripts/replay_mined.py runs/red red
    python scripts/replay_mined.py runs/red red --attack-dir runs/red-eval/cce
"""

import argparse
import json
from pathlib import Path

import torch

from darkminer.models import disable_lora, load_model
from darkminer.models.adapters import ERASURE_CONFIG_NAME, apply_adapter
from darkminer.training.checkpoint import load_tensors
from darkminer.worlds import world_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="A finished Dark Miner output directory.")
    parser.add_argument("concept", help="The concept the run erased.")
    parser.add_argument("--model", default="shapesworld", help="The run's base model.")
    parser.add_argument("--images", type=int, default=16, help="Images per embedding and model.")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps (verification's default).")
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="Guidance (verification's default).")
    parser.add_argument(
        "--attack-dir", type=Path, help="An attack's output directory whose embeddings.safetensors to replay too."
    )
    args = parser.parse_args()

    model = load_model(args.model)
    detector = world_for(model).detector(model, args.concept)
    if detector is None:
        parser.error(f"the {args.model} model's world has no detector for {args.concept!r}.")
    apply_adapter(model, args.run)
    checkpoints = sorted(args.run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if not checkpoints:
        parser.error(f"{args.run} has no checkpoint-* directory; is it a Dark Miner run?")
    tensors = load_tensors(checkpoints[-1] / "embeddings.safetensors")
    entries = json.loads(json.loads((checkpoints[-1] / "state.json").read_text())["entries"])
    space = json.loads((args.run / ERASURE_CONFIG_NAME).read_text())["config"]["mining"]["embedding_space"]
    generator = torch.Generator().manual_seed(0)
    sampler = dict(
        num_images_per_prompt=args.images, num_inference_steps=args.steps, guidance_scale=args.guidance_scale
    )
    replays = []
    for i in range(sum(name.endswith(".embedding") for name in tensors)):
        loop = "text" if entries[i]["loop"] < 0 else str(entries[i]["loop"])
        replays.append((loop, tensors[f"{i}.embedding"], space == "token"))
    if args.attack_dir is not None:
        path = args.attack_dir / "embeddings.safetensors"
        if not path.is_file():
            parser.error(f"{args.attack_dir} has no embeddings.safetensors; pass an attack's output directory.")
        # an attack learns token-input embeddings whatever space the run mined in
        replays += [(args.attack_dir.name, e[None], True) for e in load_tensors(path)["embeddings"]]
    print("entry  loop  tokens  token norm  erased  original")
    for i, (loop, embedding, tokens) in enumerate(replays):
        embedding = embedding.to(model.device)
        cond = model.encode_prompt(token_embeds=embedding.to(model.dtype)) if tokens else embedding
        with torch.no_grad():
            latents = model.prepare_latents(args.images, generator=generator)
            erased = model.generate(cond=cond, latents=latents.clone(), **sampler)
            with disable_lora(model.unet):
                original = model.generate(cond=cond, latents=latents.clone(), **sampler)
        shares = [float(detector(images).decisions.float().mean()) for images in (erased, original)]
        norm = float(embedding.float().norm(dim=-1).mean()) if tokens else float("nan")
        row = f"{i:5d}  {loop:>4}  {embedding.shape[1]:6d}  {norm:10.2f}"
        print(f"{row}  {shares[0]:6.2f}  {shares[1]:8.2f}", flush=True)


if __name__ == "__main__":
    main()
