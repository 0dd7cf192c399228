"""Peak memory of sampling (one batch vs the default chunks) and of a Dark Miner circumventing step (with and without
gradient checkpointing), on a random-weight model of a named architecture built in memory.

    python scripts/memory_benchmark.py --architecture tiny --device cpu --dtype fp32
    python scripts/memory_benchmark.py --architecture sd14 --device cuda --dtype bf16 --images 16

Each case runs in a fresh process, so that one case's peak does not hide another's. On CUDA the figure is the peak
of allocated GPU memory; on CPU, the rise of the process's peak resident set above what it was with the model built.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CASES = ("sample-one-batch", "sample-chunked", "circumvent-step", "circumvent-step-checkpointed")


def _peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(case: str, architecture: str, device: str, dtype: str, images: int) -> dict:
    import torch

    from darkminer.models import add_lora, attention_value_modules, lora_row_mask
    from darkminer.models.runtime import resolve_device, resolve_dtype
    from darkminer.testing import random_model

    device = resolve_device(device)
    model = random_model(architecture).to(device=device, dtype=resolve_dtype(dtype, device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base = _peak_mb(device)
    start = time.perf_counter()
    if case.startswith("sample"):
        model.batch_size = images if case == "sample-one-batch" else None
        model.generate(["a photo"] * images, num_inference_steps=2)
    else:
        add_lora(model.unet, attention_value_modules(model.unet, "all"))
        if case.endswith("checkpointed"):
            model.unet.enable_gradient_checkpointing()
        x0 = torch.randn(1, *model.latent_shape, device=device)
        noise, t = torch.randn_like(x0), torch.tensor([500], device=device)
        # As one circumventing step with `circumvent.one_call` (the default): the frozen targets' three rows (anchor,
        # 0*c, -c) and the adapted four (c and the same three) in one batch, the target rows' adapters masked.
        cond = model.encode_prompt(["a photo"] * 7)
        x_t = model.add_noise(x0, noise, t).to(model.dtype)
        with lora_row_mask(model.unet, torch.arange(7) >= 3):  # open through backward, which may recompute
            loss = model.predict_noise(x_t.repeat(7, 1, 1, 1), t.repeat(7), cond).float().square().mean()
            loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    peak = _peak_mb(device)
    return {
        "case": case,
        "peak_mb": round(peak if device.type == "cuda" else peak - base, 1),
        "seconds": round(time.perf_counter() - start, 2),
        "chunk": model.chunk_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="tiny", help="tiny, sd14 or sd21 (random weights).")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--images", type=int, default=16, help="Images sampled by the sampling cases.")
    parser.add_argument("--case", choices=CASES, help="Run one case in this process and print its JSON.")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.architecture, args.device, args.dtype, args.images)))
        return
    print(f"{args.architecture}, device {args.device}, dtype {args.dtype}, {args.images} images sampled (2 steps)")
    print(f"{'case':32} {'peak MB':>10} {'seconds':>8} {'chunk':>6}")
    for case in CASES:
        argv = [sys.executable, __file__, "--case", case, *sys.argv[1:]]
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        row = json.loads(out)
        print(f"{case:32} {row['peak_mb']:>10.1f} {row['seconds']:>8.2f} {row['chunk']:>6}")


if __name__ == "__main__":
    main()
