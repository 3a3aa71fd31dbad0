"""Loading weights into any model: by name, tensor by tensor, with a report of what matched.

    report = load_weights(model, "ckpt/model.safetensors")      # delta load: missing keys keep their values
    print(report.summary())

Reading the files is `utils/weight_files.py` (every format, wrapper keys and prefixes); models add
only their own naming through `rename` (Wan: original <-> diffusers names). One loader serves three
kinds of model:

- **real tensors**: copied in place (optimisers and hooks keep pointing at the same tensor), or
  replaced when `dtype` changes them;
- **built on `meta`**: each tensor is materialised on the CPU from the checkpoint, so a model is
  loaded with one copy of its weights; tensors the checkpoint lacks get `init_missing` or raise,
  and non-persistent buffers left on meta are recomputed by their module
  (`reset_non_persistent_buffers()`) or raise;
- **sharded (FSDP2 DTensors)**: each rank reads only the region of each tensor it holds (its rows,
  straight from the safetensors file) into its local shard; `init_missing` values are cut likewise.

Shape conflicts and a checkpoint matching nothing raise before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from worldtune.utils.weight_files import (
    CheckpointError,
    Region,
    Rename,
    Source,
    WeightSource,
    describe_keys,
    read_state_dict,
    strip_wrappers,
)

__all__ = ["CheckpointError", "LoadReport", "PartialLoad", "WeightSource", "load_partial", "load_weights",
           "initialise", "local_region", "model_names", "read_state_dict", "read_weights", "to_empty_keeping_buffers"]

InitMissing = Callable[[str, torch.Tensor], torch.Tensor]


@dataclass
class LoadReport:
    """What a load did, in the model's own (wrapper-free) names."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)

    def summary(self) -> str:
        total = len(self.loaded) + len(self.missing)
        lines = [f"{self.source}: loaded {len(self.loaded)} of {total} model tensors"]
        for label, names in (("missing (model values kept)", [n for n in self.missing if n not in self.initialised]),
                             ("unexpected (ignored)", self.unexpected),
                             ("missing, initialised by the model", self.initialised)):
            if names:
                lines.append(f"  {label}: {len(names)}: {describe_keys(names)}")
        lines += [f"  shape mismatch {k}: checkpoint {list(c)} vs model {list(m)}"
                  for k, c, m in self.shape_mismatched]
        return "\n".join(lines)


PartialLoad = LoadReport  # the name `load_partial` callers know


# ----------------------------------------------------------------------------- the model's slots

_Slot = tuple[nn.Module, str, bool]  # (owning module, attribute, is_parameter)


def _slots(model: nn.Module) -> dict[str, _Slot]:
    """Every state-dict entry of `model` (tied weights under each name), keyed by wrapper-free name."""
    slots: dict[str, _Slot] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        dot = prefix + "." if prefix else ""
        slots.update({dot + a: (module, a, True) for a, p in module._parameters.items() if p is not None})
        slots.update({dot + a: (module, a, False) for a, b in module._buffers.items()
                      if b is not None and a not in module._non_persistent_buffers_set})
    names = strip_wrappers(slots)
    return {names[key]: slot for key, slot in slots.items()}


def model_names(model: nn.Module) -> list[str]:
    """The model's state-dict names without wrapper prefixes or segments (what a load matches)."""
    return list(_slots(model))


def _current(slot: _Slot) -> torch.Tensor:
    module, attr, is_param = slot
    return (module._parameters if is_param else module._buffers)[attr]


def _is_sharded(tensor: torch.Tensor) -> bool:
    return hasattr(tensor, "device_mesh") and hasattr(tensor, "placements") and hasattr(tensor, "to_local")


def local_region(tensor: torch.Tensor) -> Region:
    """The region of the full tensor this rank's shard of a DTensor holds (Shard / Replicate
    placements, chunked as `torch.chunk` does: FSDP2's layout)."""
    from torch.distributed.tensor import Replicate, Shard

    shape, start = list(tensor.shape), [0] * tensor.ndim
    coordinate = tensor.device_mesh.get_coordinate()
    for mesh_dim, placement in enumerate(tensor.placements):
        if type(placement) is Replicate:
            continue
        if type(placement) is not Shard:
            raise ValueError(f"cannot load into a DTensor placed as {placement} (Shard or Replicate only)")
        dim, parts = placement.dim, tensor.device_mesh.size(mesh_dim)
        chunk = -(-shape[dim] // parts)
        begin = min(coordinate[mesh_dim] * chunk, shape[dim])
        start[dim] += begin
        shape[dim] = min(chunk, shape[dim] - begin)
    if tuple(shape) != tuple(tensor.to_local().shape):
        raise ValueError(f"computed shard {shape} differs from the local tensor {list(tensor.to_local().shape)}")
    return tuple(slice(s, s + n) for s, n in zip(start, shape, strict=True))


# ----------------------------------------------------------------------------- planning

def _plan(ckpt: WeightSource, slots: dict[str, _Slot]) -> LoadReport:
    report = LoadReport(ckpt.label)
    report.unexpected = [name for name in ckpt.names() if name not in slots]
    for name, slot in slots.items():  # model order, so reports read like the model
        shape = tuple(_current(slot).shape)
        if name not in ckpt:
            report.missing.append(name)
        elif ckpt.shape(name) != shape:
            report.shape_mismatched.append((name, ckpt.shape(name), shape))
        else:
            report.loaded.append(name)
    return report


def _check(report: LoadReport, slots: dict[str, _Slot], strict: bool, can_init: bool) -> None:
    if report.shape_mismatched:
        raise CheckpointError(report.source, "shapes differ from the model (shape mismatch):\n" + "\n".join(
            f"  {k}: checkpoint {list(c)} vs model {list(m)}" for k, c, m in report.shape_mismatched))
    if not report.loaded:
        count = len(report.unexpected)
        raise CheckpointError(report.source, f"none of its {count} keys match the model (no tensor matches); "
                              f"checkpoint keys: {describe_keys(report.unexpected, 5)}; "
                              f"model keys: {describe_keys(list(slots), 5)}")
    if strict and (report.missing or report.unexpected):
        raise CheckpointError(report.source, "strict load failed\n" + report.summary())
    tied = {id(_current(slots[name])) for name in report.loaded}  # a tied weight loads under its twin's name
    on_meta = [n for n in report.missing if _current(slots[n]).is_meta and id(_current(slots[n])) not in tied]
    if on_meta and not can_init:
        raise CheckpointError(report.source, f"{len(on_meta)} model tensor(s) on the meta device are not in the "
                              f"checkpoint: {describe_keys(on_meta)}; pass init_missing=... to initialise them")


def _needs_values(tensor: torch.Tensor) -> bool:
    """Whether `init_missing` fills a tensor the checkpoint lacks: one on meta, or a shard (a sharded
    model is materialised empty, so its values come from the load or from nowhere)."""
    return tensor.is_meta or _is_sharded(tensor)


# ----------------------------------------------------------------------------- writing one tensor

class _Writer:
    """Puts values into the model's slots; remembers replaced tensors so tied weights stay tied."""

    def __init__(self, dtype: torch.dtype | None) -> None:
        self.dtype = dtype
        self.done: dict[int, torch.Tensor] = {}

    def write(self, slot: _Slot, read: Callable[[Region | None], torch.Tensor], fresh: bool = False) -> None:
        """`read(region)` gives the values (region None: the whole tensor); `fresh`: the tensor it
        returns is the caller's to keep (no copy needed)."""
        module, attr, is_param = slot
        table = module._parameters if is_param else module._buffers
        old = table[attr]
        if id(old) in self.done:  # a tied weight, already replaced under another name
            table[attr] = self.done[id(old)]
            return
        if _is_sharded(old):
            local = old.to_local()
            if local.is_meta:
                raise ValueError("sharded tensor is still on meta: materialise the model first "
                                 "(to_empty_keeping_buffers)")
            with torch.no_grad():
                local.copy_(read(local_region(old)))
            return
        target = self.dtype if self.dtype is not None and old.is_floating_point() else old.dtype
        value = read(None)
        if not old.is_meta and old.dtype == target:
            with torch.no_grad():
                old.copy_(value)
            return
        new = value.to(device="cpu" if old.is_meta else old.device, dtype=target, copy=not fresh)
        if is_param:
            new = nn.Parameter(new, requires_grad=old.requires_grad)
        table[attr] = self.done[id(old)] = new

    def retie(self, slot: _Slot) -> bool:
        """Point a slot missing from the checkpoint at its twin's new tensor; False if it has none."""
        module, attr, is_param = slot
        table = module._parameters if is_param else module._buffers
        if id(table[attr]) not in self.done:
            return False
        table[attr] = self.done[id(table[attr])]
        return True


def _initial_reader(value: torch.Tensor) -> Callable[[Region | None], torch.Tensor]:
    return lambda region: value[region] if region else value


# ----------------------------------------------------------------------------- the load

def load_weights(model: nn.Module, source: Source | WeightSource, *, strict: bool = False,
                 dtype: torch.dtype | None = None, rename: Rename | None = None,
                 init_missing: InitMissing | None = None, assign: bool = False) -> LoadReport:
    """Load a checkpoint (path, state dict or WeightSource) into `model` by name, tensor by tensor.

    Names are the model's state-dict names without wrappers; `rename` maps the checkpoint's keys
    to them (default: wrapper prefixes and segments stripped). Missing and unexpected keys are
    reported, not fatal (delta loading), unless `strict`. Tensors on meta are materialised on the
    CPU, in `dtype` (floating tensors) or their own dtype; those absent from the checkpoint get
    `init_missing(name, model_tensor)` (a full tensor) or raise. Sharded tensors keep their dtype.
    A state dict's tensors are copied unless `assign` (the caller hands them over).
    """
    slots = _slots(model)
    ckpt = source if isinstance(source, WeightSource) else WeightSource(source, rename=rename or strip_wrappers)
    report = _plan(ckpt, slots)
    _check(report, slots, strict, init_missing is not None)
    writer = _Writer(dtype)
    for name in report.loaded:
        writer.write(slots[name], lambda region, n=name: ckpt.read(n, region), fresh=assign or ckpt.fresh(name))
    for name in report.missing:
        slot = slots[name]
        if writer.retie(slot) or init_missing is None or not _needs_values(_current(slot)):
            continue
        value = init_missing(name, _current(slot))
        if tuple(value.shape) != tuple(_current(slot).shape):
            raise CheckpointError(report.source, f"init_missing gave {name} shape {list(value.shape)}, "
                                  f"model has {list(_current(slot).shape)}")
        writer.write(slot, _initial_reader(value))
        report.initialised.append(name)
    recompute_meta_buffers(model, report.source)
    return report


def initialise(model: nn.Module, init: InitMissing, names: list[str] | None = None) -> list[str]:
    """Fill every tensor of `model` (or those `names`) with `init(name, model_tensor)`, a full
    tensor: meta tensors are materialised on the CPU, shards get their region. Returns the names."""
    slots = _slots(model)
    writer = _Writer(None)
    done = []
    for name in names if names is not None else list(slots):
        slot = slots[name]
        if writer.retie(slot):
            continue
        value = init(name, _current(slot))
        writer.write(slot, _initial_reader(value), fresh=True)
        done.append(name)
    recompute_meta_buffers(model)
    return done


def recompute_meta_buffers(model: nn.Module, source: str = "model") -> None:
    """Non-persistent buffers (never in a checkpoint) left on meta by a meta build are recomputed
    by their module's `reset_non_persistent_buffers()`; a module without one is an error, not a
    model that fails at its first forward."""
    for name, module in model.named_modules():
        meta = [b for b in module._non_persistent_buffers_set
                if module._buffers.get(b) is not None and module._buffers[b].is_meta]
        if not meta:
            continue
        reset = getattr(module, "reset_non_persistent_buffers", None)
        if reset is not None:
            reset()
        still = [b for b in meta if module._buffers[b].is_meta]
        if still:
            where = ", ".join(f"{name}.{b}" if name else b for b in still)
            raise CheckpointError(source, f"non-persistent buffer(s) {where} were built on meta and "
                                  f"{type(module).__name__} cannot recompute them: give it "
                                  "reset_non_persistent_buffers(), or build it with real buffers")


def to_empty_keeping_buffers(model: nn.Module, device: torch.device | str) -> nn.Module:
    """`model.to_empty(device)` (FSDP2's way to materialise a sharded meta model) without losing
    the non-persistent buffers that were already real: they are copied back, the ones on meta are
    recomputed (`recompute_meta_buffers`)."""
    kept = {(id(module), b): module._buffers[b].detach().clone()
            for module in model.modules() for b in module._non_persistent_buffers_set
            if module._buffers.get(b) is not None and not module._buffers[b].is_meta}
    was_meta = {(id(module), b) for module in model.modules() for b in module._non_persistent_buffers_set
                if module._buffers.get(b) is not None and module._buffers[b].is_meta}
    model.to_empty(device=device)
    for module in model.modules():
        for b in module._non_persistent_buffers_set:
            if (id(module), b) in kept:
                module._buffers[b].copy_(kept[(id(module), b)])
            elif (id(module), b) in was_meta:
                module._buffers[b] = module._buffers[b].to("meta")  # to be recomputed, not left as garbage
    recompute_meta_buffers(model)
    return model


# ----------------------------------------------------------------------------- the seeds' spelling

def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from one weight file (any format), read without unpickling code."""
    return read_state_dict(path)


def load_partial(model: nn.Module, path: str | os.PathLike | Mapping[str, torch.Tensor]) -> LoadReport:
    """`model.load_state_dict(weights, strict=False)` as the seeds do, reported; raises when no key
    matches or a matching key has another shape."""
    return load_weights(model, path)
