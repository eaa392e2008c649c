"""Singular-value fine-tuning (SVF, Transformer², Sun et al. 2025, arXiv:2501.06252, section 3.1).

A chosen weight matrix W = U diag(σ) Vᵀ is decomposed once (U, σ, V frozen); an expert is one
vector z per matrix, and the adapted matrix is W' = U diag(σ ⊙ z) Vᵀ. Only z trains, so an expert
holds min(out, in) numbers per matrix.

SVFLinear computes W' as W + U diag(σ ⊙ (z − 1)) Vᵀ, the same matrix (W = U diag(σ) Vᵀ) written so
that z = 1 gives W bit for bit instead of W up to the rounding of the product U diag(σ) Vᵀ.

Like LoRA (lora.py) SVF is applied from outside the model: `apply_svf` swaps the nn.Linear modules
whose dotted names match a regular expression for SVFLinear in place, keeping their `weight`
(state-dict keys of the base model are unchanged; u, s, vh and z are added). `SVFModel` is the
`svf` model kind the trainer trains: a frozen base model of any text kind with SVF applied.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from blt_scale.config import Config
from blt_scale.model.brain_common import InitSource

if TYPE_CHECKING:
    from blt_scale.model.build import ModelConfig

# Every weight matrix of the attention and feed-forward layers of every stack (the paper adapts
# all of them); the projections between stacks and the output head are left out.
DEFAULT_TARGETS = r".*\.(wq|wk|wv|wo|w1|w2|w3)"


class SVFObjective(Config):
    """What z is trained on. kind next_byte: next-byte cross-entropy on the training data. kind
    reinforce: the paper's objective, REINFORCE on a task reward with a KL penalty to the base model
    (train/objectives.py computes it). From each training row the first `prompt_bytes` ids are a
    prompt; the adapted model samples `samples` completions of `completion_bytes` ids; a completion's
    reward compares it with the row's true continuation (`reward`), centred by the mean reward of the
    micro-batch. Per completion ŷ the loss is
    (−(r − r̄)·log π_z(ŷ) + kl_weight·Σ_t KL(π_z ‖ π_base)) / completion_bytes, with the KL over the
    next-id distributions at each sampled position; π_base is the same model with z = 1."""

    kind: Literal["next_byte", "reinforce"] = "next_byte"
    prompt_bytes: int = Field(
        default=32, ge=1, description="reinforce: ids of each row that prompt a completion"
    )
    completion_bytes: int = Field(
        default=8,
        ge=1,
        description="reinforce: ids sampled per completion (fixed: every rank runs the same forward passes)",
    )
    samples: int = Field(default=4, ge=1, description="reinforce: completions sampled per row")
    reward: Literal["match", "prefix", "exact"] = Field(
        default="match",
        description="reinforce: a completion's reward against the true continuation: match, the fraction "
        "of its ids that are right; prefix, the fraction right before the first wrong one; exact, 1 if "
        "all are right, else 0 (train/objectives.py REWARDS)",
    )
    kl_weight: float = Field(
        default=0.1,
        ge=0,
        description="reinforce: λ, weight of the KL divergence to the base model (nats per id)",
    )

    @model_validator(mode="after")
    def _settings_of_kind(self):
        # Defaults are no settings: a saved config.yaml spells out every field.
        fields = type(self).model_fields
        stray = sorted(k for k in fields if k != "kind" and getattr(self, k) != fields[k].default)
        if self.kind == "next_byte" and stray:
            raise ValueError(
                f"{', '.join(stray)} only apply to kind reinforce; this objective is kind next_byte"
            )
        return self


class SVFConfig(Config):
    kind: Literal["svf"] = "svf"
    base: ModelConfig = Field(description="the model being adapted (`blt adapt` copies it from the export)")
    targets: str = Field(
        default=DEFAULT_TARGETS,
        description="regular expression; nn.Linear layers whose dotted name (in the base model) matches "
        "it in full get an SVF vector",
    )
    init_from: list[InitSource] = Field(
        default=[], description="the base weights, e.g. [{path: EXPORT, prefix: base.}] (`blt adapt` sets it)"
    )
    objective: SVFObjective = Field(
        default=SVFObjective(), description="what z is trained on: kind next_byte or reinforce"
    )

    @field_validator("targets")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"not a regular expression: {err}") from None
        return value

    @field_validator("base")
    @classmethod
    def _text_base(cls, value):
        if value.kind not in ("blt", "byte_lm"):
            raise ValueError(f"SVF adapts a text model (kind blt or byte_lm), not kind {value.kind}")
        return value


class SVFLinear(nn.Linear):
    """nn.Linear with W' = U diag(σ ⊙ z) Vᵀ; u, s, vh are buffers (filled by `decompose`), z the
    only parameter (initialised to 1: the base layer)."""

    def __init__(self, base: nn.Linear):
        super().__init__(
            base.in_features,
            base.out_features,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )
        self.weight = base.weight
        self.weight.requires_grad_(False)
        if base.bias is not None:
            self.bias = base.bias
            self.bias.requires_grad_(False)
        r = min(base.in_features, base.out_features)
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        # Zeros until decompose(): the layer computes W exactly, also before the decomposition.
        self.register_buffer("u", torch.zeros(base.out_features, r, **kw))
        self.register_buffer("s", torch.zeros(r, **kw))
        self.register_buffer("vh", torch.zeros(r, base.in_features, **kw))
        self.z = nn.Parameter(torch.ones(r, **kw))
        self.use_base = False  # set by `base_weights`: compute with W, as if z = 1

    @torch.no_grad()
    def decompose(self) -> None:
        """U, σ, Vᵀ of the current weight (in float64, then stored in the weight's dtype)."""
        u, s, vh = torch.linalg.svd(self.weight.detach().double(), full_matrices=False)
        self.u.copy_(u)
        self.s.copy_(s)
        self.vh.copy_(vh)

    def adapted_weight(self) -> torch.Tensor:
        w = self.weight
        if torch.is_grad_enabled():
            return w + ((self.u * (self.s * (self.z - 1))) @ self.vh).to(w.dtype)
        # Inference (generation calls the layer once per byte): form W' once per z. Keyed on z's
        # values, not its version: FSDP gathers z into the same storage every step without bumping
        # the version, so a version key served the previous step's W' to no-grad forward passes
        # (REINFORCE's sampling) after an optimizer step.
        key = (w.data_ptr(), w._version, self.u._version, w.dtype)
        cached_z = getattr(self, "_cached_z", None)
        if getattr(self, "_cache_key", None) != key or cached_z is None or not torch.equal(cached_z, self.z):
            self._cached = w + ((self.u * (self.s * (self.z - 1))) @ self.vh).to(w.dtype)
            self._cached_z = self.z.detach().clone()
            self._cache_key = key
        return self._cached

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight if self.use_base else self.adapted_weight(), self.bias)


def svf_layers(model: nn.Module) -> dict[str, SVFLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SVFLinear)}


def apply_svf(model: nn.Module, targets: str = DEFAULT_TARGETS, decompose: bool = True) -> list[str]:
    """Swap every nn.Linear whose dotted name fully matches `targets` for an SVFLinear (z = 1);
    returns their names. decompose=False leaves U, σ, V at zero (meta device, or weights that are
    loaded later: call `decompose_all` then)."""
    pattern = re.compile(targets)
    chosen = [name for name, m in model.named_modules() if type(m) is nn.Linear and pattern.fullmatch(name)]
    if not chosen:
        linears = [name for name, m in model.named_modules() if type(m) is nn.Linear]
        raise ValueError(
            f"SVF targets {targets!r} match no nn.Linear of the model; "
            f"some of its names: {', '.join(linears[:6])}"
        )
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = SVFLinear(getattr(parent, child))
        if decompose:
            layer.decompose()
        setattr(parent, child, layer)
    return chosen


@contextmanager
def base_weights(model: nn.Module) -> Iterator[None]:
    """Inside, every SVF layer computes with its base matrix W (the base model, z = 1) without
    touching z: under FSDP z is sharded, and the layers still gather it as they always do."""
    layers = list(svf_layers(model).values())
    for layer in layers:
        layer.use_base = True
    try:
        yield
    finally:
        for layer in layers:
            layer.use_base = False


def decompose_all(model: nn.Module) -> int:
    layers = svf_layers(model)
    for layer in layers.values():
        layer.decompose()
    return len(layers)


def get_z(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: layer.z.detach().clone() for name, layer in svf_layers(model).items()}


@torch.no_grad()
def set_z(model: nn.Module, z: dict[str, torch.Tensor] | None) -> None:
    """Load one z per SVF layer (None: z = 1, the base model). Names and sizes must match."""
    layers = svf_layers(model)
    if z is None:
        for layer in layers.values():
            layer.z.fill_(1.0)
        return
    if set(z) != set(layers):
        missing, extra = sorted(set(layers) - set(z)), sorted(set(z) - set(layers))
        raise ValueError(f"SVF vectors do not fit the model: missing {missing[:3]}, unknown {extra[:3]}")
    for name, layer in layers.items():
        if z[name].shape != layer.z.shape:
            raise ValueError(
                f"SVF vector {name!r} has {tuple(z[name].shape)} values, "
                f"the layer needs {tuple(layer.z.shape)}"
            )
        layer.z.copy_(z[name])


def mix_z(experts: list[dict[str, torch.Tensor]], alphas: list[float]) -> dict[str, torch.Tensor]:
    """z' = Σ_k α_k z_k (the paper's few-shot adaptation, eq. in section 3.2)."""
    return {name: sum(a * e[name] for a, e in zip(alphas, experts)) for name in experts[0]}


class SVFModel(nn.Module):
    """The `svf` model kind: the base model, frozen, with SVF layers; only the z vectors train."""

    def __init__(self, cfg: SVFConfig):
        super().__init__()
        from blt_scale.model.build import build_model

        self.cfg = cfg
        self.base = build_model(cfg.base)
        self.base.requires_grad_(False)
        self.targets = apply_svf(self.base, cfg.targets, decompose=False)
        self.decompose()

    def decompose(self) -> None:
        if not any(p.is_meta for p in self.base.parameters()):
            decompose_all(self.base)

    def after_init_from(self) -> None:
        """The base weights were just loaded (train/init_from.py): decompose them."""
        self.decompose()

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.base(*args, **kwargs)


def svf_params(model: nn.Module) -> int:
    return sum(layer.z.numel() for layer in svf_layers(model).values())


def svf_vector_size(cfg: SVFConfig) -> int:
    """Numbers in one expert of this config (Σ min(out, in) over the matched layers)."""
    with torch.device("meta"):
        return svf_params(SVFModel(cfg))
