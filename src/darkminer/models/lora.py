"""LoRA adapters on the UNet: add, save, load, merge, and switch off for the frozen original.

Adapters are peft `LoraConfig`s injected through diffusers' `PeftAdapterMixin` (`unet.add_adapter`), so the UNet
stays a plain `UNet2DConditionModel`. On disk an adapter is what the diffusers LoRA training scripts write, so that
plain diffusers loads it in one line::

    directory/
      pytorch_lora_weights.safetensors   # diffusers keys, prefixed `unet.`; the LoraConfig in the header too
      adapter_config.json                # {"lora": {r, lora_alpha, target_modules, ...}, "metadata": {...}}

    pipe = StableDiffusionPipeline.from_pretrained(...)
    pipe.load_lora_weights("directory")

Trainable LoRA parameters are kept in float32 whatever the dtype of the UNet (the usual mixed-precision recipe).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from diffusers.utils import convert_state_dict_to_diffusers
from diffusers.utils.state_dict_utils import StateDictType
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from darkminer.models.errors import LoraLoadError

if TYPE_CHECKING:
    from darkminer.models.wrapper import DiffusionModel

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "LORA_WEIGHTS_NAME",
    "add_lora",
    "add_lora_from_deltas",
    "attention_value_modules",
    "linear_modules",
    "disable_lora",
    "has_lora",
    "load_lora",
    "lora_row_mask",
    "lora_state_dict",
    "merge_lora",
    "save_lora",
    "upcast_lora_params",
]

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
"""File name diffusers' `load_lora_weights(directory)` looks for."""
ADAPTER_CONFIG_NAME = "adapter_config.json"
"""The LoraConfig and the caller's metadata, enough to rebuild the adapter."""

_PREFIX = "unet."
# diffusers reads this safetensors header entry back into `LoraConfig(**...)` in `load_lora_weights`.
_DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
# The LoraConfig fields written to disk; the others keep peft's defaults, which is what `add_lora` uses.
_CONFIG_FIELDS = ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "use_rslora")
_MAX_KEYS_SHOWN = 8


# ---------------------------------------------------------------------- adding adapters


def modules_ending_with(unet: nn.Module, suffixes: Sequence[str]) -> list[str]:
    """Full names, in module order, of the UNet's modules whose name ends with one of `suffixes` (e.g.
    `"attn2.to_k"`): the `target_modules` of [`add_lora`] for a method configured by suffixes."""
    return [name for name, _ in unet.named_modules() if name.endswith(tuple(suffixes))]


def attention_value_modules(unet: nn.Module, which: Literal["all", "cross", "self"] = "all") -> list[str]:
    """Names of the value projections (`to_v`) of the UNet's attention modules.

    In diffusers' transformer blocks `attn1` is self-attention and `attn2` is cross-attention to the text.

    Args:
        unet (`nn.Module`):
            The UNet.
        which (`"all"`, `"cross"` or `"self"`, defaults to `"all"`):
            Which attention modules to include.

    Returns:
        `list[str]`: full module names, in module order (valid `target_modules` for [`add_lora`]).

    Raises:
        `ValueError`: if `which` is not one of the three choices, or if the UNet has no such module.
    """
    parents = {"all": ("attn1", "attn2"), "self": ("attn1",), "cross": ("attn2",)}
    if which not in parents:
        raise ValueError(f"`which` must be one of {sorted(parents)}, got {which!r}.")
    names = [
        name for name, _ in unet.named_modules() if name.endswith(".to_v") and name.split(".")[-2] in parents[which]
    ]
    if not names:
        raise ValueError(f"The UNet has no {which!r} attention `to_v` modules (looked for attn1/attn2.to_v).")
    return names


def linear_modules(unet: nn.Module, cross_attention: bool = True) -> list[str]:
    """Names, in module order, of the UNet's Linear layers outside the time embedding: the attention projections,
    the feed-forward layers and the ResNet blocks' time projections.

    With `cross_attention=False` the cross-attention (`attn2`) modules are left out: the Linear layers of ESD-u
    (Gandikota et al., 2023, §3, which edits every parameter outside cross-attention), so that an edit changes how
    the UNet draws whatever the prompt asks for.

    Raises:
        `ValueError`: if the UNet has no such layer.
    """
    names = [
        name
        for name, module in unet.named_modules()
        if isinstance(module, nn.Linear)
        and not name.startswith("time_embedding.")
        and (cross_attention or ".attn2." not in name)
    ]
    if not names:
        raise ValueError("The UNet has no Linear layers outside its time embedding.")
    return names


def _check_targets(unet: nn.Module, target_modules: Sequence[str] | str) -> None:
    if isinstance(target_modules, str):
        return  # a regex: peft raises itself when it matches nothing
    if not target_modules:
        raise ValueError("`target_modules` is empty; pass module names (e.g. `attention_value_modules(unet)`).")
    names = [name for name, _ in unet.named_modules()]
    unknown = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if unknown:
        raise ValueError(
            f"`target_modules` names modules the UNet does not have: {unknown[:_MAX_KEYS_SHOWN]}. "
            f"Valid examples: {attention_value_modules(unet)[:2]}."
        )


def _inject(unet: nn.Module, config: LoraConfig, adapter_name: str) -> None:
    if adapter_name in getattr(unet, "peft_config", {}):
        raise ValueError(
            f"The UNet already has an adapter named {adapter_name!r}; pass another `adapter_name` or merge it first."
        )
    unet.add_adapter(config, adapter_name=adapter_name)
    upcast_lora_params(unet)


def add_lora(
    unet: nn.Module,
    target_modules: Sequence[str] | str,
    rank: int = 8,
    alpha: float = 8,
    adapter_name: str = "default",
) -> LoraConfig:
    r"""Add a LoRA adapter to the UNet and make it the active one.

    The adapter starts as the identity (`lora_B` is zero). Its parameters are float32 and trainable; the base
    weights stay frozen. The update of a targeted layer is $\frac{\alpha}{r} B A x$.

    Args:
        unet (`UNet2DConditionModel`):
            The UNet, modified in place.
        target_modules (`list[str]` or `str`):
            Module names (full names or name suffixes, as peft matches them), or one regex matched in full against
            every module name. [`attention_value_modules`] gives Dark Miner's choice.
        rank (`int`, defaults to 8):
            LoRA rank `r`.
        alpha (`float`, defaults to 8):
            LoRA `alpha`.
        adapter_name (`str`, defaults to `"default"`):
            Name of the adapter on the UNet.

    Returns:
        `peft.LoraConfig`: the adapter's config.

    Raises:
        `ValueError`: on a non-positive rank or alpha, unknown target modules, or an adapter name already in use.
    """
    if rank < 1 or alpha <= 0:
        raise ValueError(f"`rank` must be >= 1 and `alpha` > 0, got rank={rank}, alpha={alpha}.")
    _check_targets(unet, target_modules)
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=True)
    _inject(unet, config, adapter_name)
    return config


def add_lora_from_deltas(
    unet: nn.Module,
    deltas: Mapping[str, torch.Tensor],
    max_rank: int | None = None,
    adapter_name: str = "default",
) -> LoraConfig:
    r"""Add a LoRA adapter whose update of each named Linear module is a given dense weight delta.

    For methods that compute a weight edit $W \to W + \Delta$ instead of training LoRA (UCE's closed form, SalUn's
    masked fine-tuning), so that the edit is saved and loaded like any other adapter, in plain diffusers too. Each
    delta is factored by SVD, $\Delta = U S V^\top$, into $B = U_r S_r^{1/2}$ and $A = S_r^{1/2} V_r^\top$ with
    $\alpha = r$, so the LoRA update $\frac{\alpha}{r} B A$ equals $\Delta$ (up to float32 rounding) when the
    rank $r$ is `min(out, in)`. Ranks may differ per module; they are recorded in the config's `rank_pattern` and
    `alpha_pattern`, which `save_lora` writes and diffusers' `load_lora_weights` reads.

    Args:
        unet (`UNet2DConditionModel`):
            The UNet, modified in place; the new adapter is the active one.
        deltas (`Mapping[str, torch.Tensor]`):
            Full module name (as in `unet.named_modules()`) -> delta of shape `(out_features, in_features)` of
            that `nn.Linear` module's weight.
        max_rank (`int`, *optional*):
            Keep at most this many singular directions per module (the best rank-`max_rank` approximation of each
            delta); by default every module gets rank `min(out, in)`, which is exact.
        adapter_name (`str`, defaults to `"default"`):
            Name of the adapter on the UNet.

    Returns:
        `peft.LoraConfig`: the adapter's config.

    Raises:
        `ValueError`: on an empty `deltas`, a name that is not a Linear module of the UNet, a delta of the wrong shape
            or with non-finite values, `max_rank < 1`, or an adapter name already in use.
    """
    if not deltas:
        raise ValueError("`deltas` is empty; pass {module name: weight delta} for at least one Linear module.")
    if max_rank is not None and max_rank < 1:
        raise ValueError(f"`max_rank` must be >= 1 or None (exact), got {max_rank}.")
    modules = dict(unet.named_modules())
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, delta in deltas.items():
        module = modules.get(name)
        if not isinstance(module, nn.Linear):
            kind = "no such module" if module is None else type(module).__name__
            raise ValueError(f"deltas[{name!r}]: not a Linear module of the UNet ({kind}); use full module names.")
        if tuple(delta.shape) != tuple(module.weight.shape):
            raise ValueError(
                f"deltas[{name!r}] has shape {tuple(delta.shape)}, but the module's weight is "
                f"{tuple(module.weight.shape)} (out_features, in_features)."
            )
        if not torch.isfinite(delta).all():
            raise ValueError(f"deltas[{name!r}] holds NaN or inf values.")
        # float64 SVD so that B @ A reproduces the delta to float32 precision.
        u, s, vh = torch.linalg.svd(delta.detach().to("cpu", torch.float64), full_matrices=False)
        rank = len(s) if max_rank is None else min(len(s), max_rank)
        root = s[:rank].sqrt()
        factors[name] = (u[:, :rank] * root, root[:, None] * vh[:rank])

    ranks = {name: a.shape[0] for name, (_, a) in factors.items()}
    common = Counter(ranks.values()).most_common(1)[0][0]
    # `^` anchors a pattern at the start of the module name (peft#2419), so no module matches another's pattern.
    pattern = {f"^{name}": rank for name, rank in ranks.items() if rank != common}
    config = LoraConfig(
        r=common,
        lora_alpha=common,
        target_modules=list(factors),
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        init_lora_weights=True,
    )
    _inject(unet, config, adapter_name)
    with torch.no_grad():
        for name, (b, a) in factors.items():
            layer = unet.get_submodule(name)
            layer.lora_B[adapter_name].weight.copy_(b)
            layer.lora_A[adapter_name].weight.copy_(a)
    return config


def has_lora(unet: nn.Module) -> bool:
    """Whether any peft adapter layer is present in `unet` (active or not)."""
    return any(isinstance(module, BaseTunerLayer) for module in unet.modules())


def upcast_lora_params(unet: nn.Module) -> None:
    """Cast the adapter parameters of every peft layer to float32 in place (base weights are left alone)."""
    for module in unet.modules():
        if isinstance(module, BaseTunerLayer):
            for attr in module.adapter_layer_names:
                layer = getattr(module, attr, None)
                if isinstance(layer, nn.Module):
                    layer.float()


# ---------------------------------------------------------------------- state dicts and files


def _to_diffusers_key(peft_key: str) -> str:
    return next(iter(convert_state_dict_to_diffusers({peft_key: None}, original_type=StateDictType.PEFT)))


def _peft_state(unet: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    if adapter_name not in getattr(unet, "peft_config", {}):
        present = sorted(getattr(unet, "peft_config", {}))
        raise ValueError(f"The UNet has no adapter named {adapter_name!r} (adapters: {present}).")
    return get_peft_model_state_dict(unet, adapter_name=adapter_name)


def lora_state_dict(unet: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's weights in diffusers' LoRA format (`unet.<module>.lora.down.weight`, `...lora.up.weight`).

    Args:
        unet (`UNet2DConditionModel`):
            A UNet carrying the adapter.
        adapter_name (`str`, defaults to `"default"`):
            Which adapter.

    Returns:
        `dict[str, torch.Tensor]`: detached, contiguous CPU tensors, keys prefixed `unet.`.

    Raises:
        `ValueError`: if the UNet has no adapter of that name.
    """
    state = convert_state_dict_to_diffusers(_peft_state(unet, adapter_name), original_type=StateDictType.PEFT)
    return {_PREFIX + key: value.detach().to("cpu").contiguous() for key, value in state.items()}


def _config_record(config: LoraConfig) -> dict[str, Any]:
    if getattr(config, "use_dora", False):
        raise ValueError("DoRA adapters are not supported by `save_lora`; use a plain LoRA.")
    record: dict[str, Any] = {}
    for field in _CONFIG_FIELDS:
        value = getattr(config, field)
        if isinstance(value, (set, frozenset, tuple)):
            value = sorted(value)
        if field in ("r", "lora_alpha", "target_modules") or value:
            record[field] = value
    return record


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    # Write next to the target and rename, so a reader (or a resumed run) never sees a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def save_lora(
    unet: nn.Module, directory: str | Path, metadata: dict[str, Any] | None = None, *, adapter_name: str = "default"
) -> Path:
    """Save an adapter as `pytorch_lora_weights.safetensors` + `adapter_config.json` (each written atomically).

    The weights file is what `StableDiffusionPipeline.save_lora_weights` writes (diffusers keys prefixed `unet.`,
    and the LoraConfig in the header), so `pipe.load_lora_weights(directory)` loads it in plain diffusers.

    Args:
        unet (`UNet2DConditionModel`):
            A UNet carrying the adapter.
        directory (`str` or `Path`):
            Output directory, created if needed; existing files of the same names are replaced.
        metadata (`dict`, *optional*):
            JSON-serialisable information stored under `"metadata"` in `adapter_config.json` (method, concept, ...).
        adapter_name (`str`, defaults to `"default"`):
            Which adapter.

    Returns:
        `Path`: `directory`.

    Raises:
        `ValueError`: if the UNet has no such adapter, or `metadata` is not JSON-serialisable.
    """
    directory = Path(directory)
    state = lora_state_dict(unet, adapter_name)  # raises ValueError on an unknown adapter
    lora_config = _config_record(unet.peft_config[adapter_name])
    try:
        config_text = json.dumps(
            {"lora": lora_config, "weights": LORA_WEIGHTS_NAME, "metadata": metadata or {}}, indent=2, sort_keys=True
        )
    except TypeError as err:
        raise ValueError(f"`metadata` must be JSON-serialisable: {err}") from err
    header = {
        "format": "pt",
        _DIFFUSERS_METADATA_KEY: json.dumps({_PREFIX + k: v for k, v in lora_config.items()}, sort_keys=True),
    }
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_write(directory / LORA_WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata=header))
    _atomic_write(directory / ADAPTER_CONFIG_NAME, lambda tmp: tmp.write_text(config_text + "\n"))
    return directory


def _damaged(weights: Path, err: Exception) -> LoraLoadError:
    return LoraLoadError(
        f"{weights} is damaged or not a safetensors file ({str(err).splitlines()[0]}); re-run the erase that wrote it."
    )


def _read_record(directory: Path, weights: Path) -> dict[str, Any]:
    config_path = directory / ADAPTER_CONFIG_NAME
    if config_path.is_file():
        try:
            record = json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            raise LoraLoadError(f"{config_path} is not valid JSON: {err}") from err
        if not isinstance(record, dict) or not isinstance(record.get("lora"), dict):
            raise LoraLoadError(f"{config_path} has no `lora` section; it was not written by `save_lora`.")
        return record
    # No adapter_config.json: fall back to the LoraConfig diffusers stores in the safetensors header.
    try:
        with safe_open(weights, framework="pt") as handle:
            raw = (handle.metadata() or {}).get(_DIFFUSERS_METADATA_KEY)
    except Exception as err:  # safetensors raises its own errors for truncated or foreign files
        raise _damaged(weights, err) from err
    lora = {k.removeprefix(_PREFIX): v for k, v in json.loads(raw).items() if k.startswith(_PREFIX)} if raw else {}
    if not lora:
        raise LoraLoadError(
            f"{directory} has no {ADAPTER_CONFIG_NAME} and {weights.name} carries no LoRA config in its header, so "
            "the adapter cannot be rebuilt; save it with `darkminer.models.save_lora`."
        )
    return {"lora": lora, "metadata": {}}


def _remove_adapter(unet: nn.Module, adapter_name: str) -> None:
    unet.delete_adapters(adapter_name)
    if not getattr(unet, "peft_config", None):
        unet.unload_lora()  # no adapter left: restore the plain modules


def _format_keys(label: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
    more = f" (+{len(keys) - _MAX_KEYS_SHOWN} more)" if len(keys) > _MAX_KEYS_SHOWN else ""
    return f"{len(keys)} {label}: {shown}{more}"


def load_lora(model: DiffusionModel, directory: str | Path, *, adapter_name: str = "default") -> dict[str, Any]:
    """Add the adapter saved by [`save_lora`] to `model.unet` and load its weights, checking every key.

    Args:
        model ([`DiffusionModel`]):
            The model; its UNet gets the adapter (active, float32).
        directory (`str` or `Path`):
            Directory holding `pytorch_lora_weights.safetensors` and (normally) `adapter_config.json`.
        adapter_name (`str`, defaults to `"default"`):
            Name for the adapter on the UNet.

    Returns:
        `dict`: the `metadata` saved with the adapter (empty if none).

    Raises:
        [`LoraLoadError`]: if files are missing, the adapter name is taken, or the weights have unexpected, missing
            or mis-shaped keys for the saved config; the UNet is left without the new adapter.
    """
    directory = Path(directory)
    weights = directory / LORA_WEIGHTS_NAME
    if not weights.is_file():
        raise LoraLoadError(f"No {LORA_WEIGHTS_NAME} in {directory}; pass a directory written by `save_lora`.")
    record = _read_record(directory, weights)
    unet = model.unet
    try:
        config = LoraConfig(**record["lora"])
    except (TypeError, ValueError) as err:
        raise LoraLoadError(f"Invalid LoRA config in {directory}: {err}") from err
    try:
        _inject(unet, config, adapter_name)
    except ValueError as err:
        raise LoraLoadError(f"Cannot add the adapter from {directory}: {err}") from err

    expected = {_to_diffusers_key(k): (k, v) for k, v in _peft_state(unet, adapter_name).items()}
    try:
        found = load_file(weights)
    except Exception as err:  # safetensors raises its own errors for truncated or foreign files
        raise _damaged(weights, err) from err
    unexpected = sorted(k for k in found if not k.startswith(_PREFIX) or k[len(_PREFIX) :] not in expected)
    found = {k[len(_PREFIX) :]: v for k, v in found.items() if k.startswith(_PREFIX)}
    missing = sorted(_PREFIX + k for k in expected if k not in found)
    mismatched = sorted(
        f"{_PREFIX}{k} {tuple(v.shape)} vs {tuple(expected[k][1].shape)}"
        for k, v in found.items()
        if k in expected and v.shape != expected[k][1].shape
    )
    if unexpected or missing or mismatched:
        _remove_adapter(unet, adapter_name)
        problems = [
            _format_keys(label, keys)
            for label, keys in (
                ("unexpected keys", unexpected),
                ("missing keys", missing),
                ("shape mismatches", mismatched),
            )
            if keys
        ]
        lora = record["lora"]
        targets = lora.get("target_modules")
        targets = repr(targets) if isinstance(targets, str) else f"{len(targets or [])} modules"
        summary = f"r={lora.get('r')}, lora_alpha={lora.get('lora_alpha')}, target_modules: {targets}"
        raise LoraLoadError(f"{weights} does not match its LoRA config ({summary}): " + "; ".join(problems) + ".")
    result = set_peft_model_state_dict(unet, {expected[k][0]: v for k, v in found.items()}, adapter_name=adapter_name)
    if result.unexpected_keys:  # cannot happen after the checks above; never load silently
        _remove_adapter(unet, adapter_name)
        raise LoraLoadError(f"peft rejected keys of {weights}: {sorted(result.unexpected_keys)[:_MAX_KEYS_SHOWN]}")
    upcast_lora_params(unet)
    return dict(record.get("metadata") or {})


# ---------------------------------------------------------------------- merging and switching off


def merge_lora(model: DiffusionModel, adapter_names: list[str] | None = None) -> DiffusionModel:
    """Fuse the active adapters into the UNet's base weights and remove every adapter layer.

    Afterwards `model.unet` is a plain, frozen `UNet2DConditionModel` that predicts what the adapted one did
    (up to floating-point rounding); `model.save_pretrained` then writes a full pipeline.

    Args:
        model ([`DiffusionModel`]):
            The model, modified in place.
        adapter_names (`list[str]`, *optional*):
            Adapters to fuse; the active ones by default.

    Returns:
        [`DiffusionModel`]: `model`.

    Raises:
        `ValueError`: if the UNet carries no adapter.
    """
    unet = model.unet
    if not has_lora(unet):
        raise ValueError("The UNet carries no LoRA adapter to merge.")
    unet.fuse_lora(lora_scale=1.0, adapter_names=adapter_names)
    unet.unload_lora()
    unet.requires_grad_(False)
    return model


@contextlib.contextmanager
def disable_lora(unet: nn.Module) -> Iterator[nn.Module]:
    """Context manager in which the UNet predicts with its original weights (all adapters off).

    Lets one UNet give both the adapted and the frozen original prediction. Adapters that were enabled are enabled
    again on exit, even on error; a UNet without adapters is left as is.

    Args:
        unet (`UNet2DConditionModel`):
            The UNet.

    Yields:
        `nn.Module`: `unet`.
    """
    layers = [module for module in unet.modules() if isinstance(module, BaseTunerLayer)]
    if not layers or all(layer.disable_adapters for layer in layers):
        yield unet
        return
    # peft's enable_adapters() marks every LoRA weight trainable again; restore the caller's flags instead.
    flags = [(p, p.requires_grad) for n, p in unet.named_parameters() if "lora_" in n]
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()
        for param, flag in flags:
            param.requires_grad_(flag)


@contextlib.contextmanager
def lora_row_mask(unet: nn.Module, adapted: torch.Tensor) -> Iterator[nn.Module]:
    """Context manager in which each row of a batch sees the adapters only where `adapted` is true.

    Every LoRA update B(A(x)) is multiplied by the row's 0 or 1, so that a masked row computes the frozen original's
    output exactly (base + 0) and passes no gradient to the adapters: one UNet call then gives both the adapted
    predictions and the frozen targets of a step, which on a GPU costs about as much as either alone. Keep the context
    open through `backward()`: under gradient checkpointing the backward pass runs the layers again.

    Args:
        unet (`UNet2DConditionModel`):
            The UNet, with adapters.
        adapted (`torch.Tensor` of shape `(N,)`, bool):
            Which rows of the UNet's input batch use the adapters.

    Raises:
        ValueError: a LoRA layer saw a batch of another size (its input does not lead with the UNet's rows).
    """
    scale = adapted.to(torch.float32)

    def mask(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if output.shape[0] != len(scale):
            raise ValueError(f"lora_row_mask: a LoRA layer saw {output.shape[0]} rows, the mask has {len(scale)}.")
        rows = scale.to(device=output.device, dtype=output.dtype)
        return output * rows.view(-1, *([1] * (output.dim() - 1)))

    handles = [
        up.register_forward_hook(mask)
        for layer in unet.modules()
        if isinstance(layer, BaseTunerLayer)
        for up in getattr(layer, "lora_B", {}).values()
    ]
    try:
        yield unet
    finally:
        for handle in handles:
            handle.remove()
