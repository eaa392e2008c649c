"""Two-pass inference with SVF experts (Transformer², Sun et al. 2025, section 3.2).

Pass one reads the prompt and chooses the vector z' the model runs with; pass two generates with
W' = U diag(σ ⊙ z') Vᵀ (model/svf.py). Three ways to choose, as in the paper, adapted to byte
models that cannot be asked a question in words:

- `prompt`: the model itself reads the prompt once per expert and the expert under which the prompt
  is most likely (lowest bits per byte) is chosen. (The paper prompts the base LLM to name the
  task; a small byte model has no such ability, but its likelihood of the prompt is its own reading.)
- `classifier`: a task classifier on what the base model makes of the prompt (the mean over the
  prompt of the hidden state its output head reads), fitted on the experts' held-out examples
  (multinomial logistic regression); the most probable expert is chosen. (The paper's classifier is
  itself an SVF expert trained to name the task; this one is a linear probe on the base model.)
- `mix`: z' = α_0·1 + Σ_k α_k z_k, with α found by the cross-entropy method on few-shot examples of
  the target task (the paper's CEM search). The base model (α_0 = 1) and every single expert are
  candidates too, so on those examples the mix is never worse than the base model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from blt_scale.model.byte_lm import ByteLM
from blt_scale.model.patcher import PatcherConfig, patch_lengths
from blt_scale.model.svf import mix_z, set_z, svf_layers
from blt_scale.model.vocab import BOS, encode

DISPATCH = ("prompt", "classifier", "mix")


@dataclass
class Expert:
    name: str
    z: dict[str, torch.Tensor]
    examples: list[str] = field(default_factory=list)


@dataclass
class Choice:
    z: dict[str, torch.Tensor] | None  # None: the base model
    weights: dict[str, float]  # expert name (and "base" for the mix) -> weight
    scores: dict[str, float]  # what pass one measured per candidate (bpb or probability)


def _forward(model: nn.Module, ids: torch.Tensor, patcher: PatcherConfig, entropy_model) -> torch.Tensor:
    if isinstance(model, ByteLM):
        return model(ids)
    entropies = entropy_model.entropies(ids) if patcher.mode == "entropy" else None
    return model(ids, patch_lengths(ids, patcher, entropies))


@torch.no_grad()
def log_probs(model: nn.Module, text: bytes, patcher: PatcherConfig, entropy_model=None) -> torch.Tensor:
    """[n, V] next-byte log-probabilities after BOS + text[:i] for each byte i of the text."""
    device = next(model.parameters()).device
    ids = torch.cat([torch.tensor([BOS]), encode(text)]).to(device)[None]
    return torch.log_softmax(_forward(model, ids[:, :-1], patcher, entropy_model)[0].float(), dim=-1)


@torch.no_grad()
def bpb(model: nn.Module, texts: list[bytes], patcher: PatcherConfig, entropy_model=None) -> float:
    """Bits per byte of the texts (each read from BOS), pooled over all their bytes."""
    nats, count = 0.0, 0
    for text in texts:
        lp = log_probs(model, text, patcher, entropy_model)
        targets = encode(text).to(lp.device)
        nats -= float(lp.gather(1, targets[:, None]).sum())
        count += len(text)
    return nats / max(count, 1) / math.log(2)


def _check(model: nn.Module, experts: list[Expert]) -> None:
    if not svf_layers(model):
        raise ValueError("two-pass inference needs SVF layers in the model (apply_svf first)")
    if not experts:
        raise ValueError("two-pass inference needs at least one expert")


def by_prompt(model, experts: list[Expert], prompt: bytes, patcher, entropy_model=None) -> Choice:
    _check(model, experts)
    scores = {}
    for e in experts:
        set_z(model, e.z)
        scores[e.name] = bpb(model, [prompt], patcher, entropy_model)
    best = min(scores, key=scores.get)
    set_z(model, None)
    return Choice(next(e.z for e in experts if e.name == best), _one_hot(experts, best), scores)


def features(model, text: bytes, patcher, entropy_model=None) -> torch.Tensor:
    """What the base model makes of a text: the mean over the text of the hidden state its output
    head reads (the last layer's normalised states, [dim])."""
    head = model.output
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach()))
    try:
        log_probs(model, text, patcher, entropy_model)
    finally:
        hook.remove()
    return seen[-1][0].float().mean(0)


def fit_classifier(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int = 300) -> nn.Linear:
    """Multinomial logistic regression on standardised features, full-batch L-BFGS, L2 1e-3."""
    torch.manual_seed(0)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6) if len(x) > 1 else torch.ones_like(x[0])
    probe = nn.Linear(x.shape[1], classes)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    xs = (x - mean) / std
    opt = torch.optim.LBFGS(probe.parameters(), lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(probe(xs), y) + 1e-3 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    probe.register_buffer("mean", mean)
    probe.register_buffer("std", std)
    return probe


_PROBES: dict[tuple, nn.Linear] = {}


def by_classifier(model, experts: list[Expert], prompt: bytes, patcher, entropy_model=None) -> Choice:
    _check(model, experts)
    lacking = [e.name for e in experts if not e.examples]
    if lacking:
        raise ValueError(f"--dispatch classifier fits on the experts' examples.jsonl; {lacking[0]} has none")
    set_z(model, None)
    key = (id(model), tuple((e.name, tuple(e.examples)) for e in experts))
    if key not in _PROBES:  # fitted once per model and set of experts, then reused for every prompt
        xs, ys = [], []
        for k, e in enumerate(experts):
            for text in e.examples:  # each example whole and its first half: prompts are often short
                data = text.encode()
                for part in (data, data[: max(1, len(data) // 2)]):
                    xs.append(features(model, part, patcher, entropy_model))
                    ys.append(k)
        _PROBES.clear()
        _PROBES[key] = fit_classifier(torch.stack(xs).cpu(), torch.tensor(ys), len(experts))
    probe = _PROBES[key]
    with torch.no_grad():
        f = features(model, prompt, patcher, entropy_model).cpu()
        probs = torch.softmax(probe((f - probe.mean) / probe.std), dim=-1).tolist()
    scores = {e.name: p for e, p in zip(experts, probs)}
    best = max(scores, key=scores.get)
    return Choice(next(e.z for e in experts if e.name == best), _one_hot(experts, best), scores)


def by_mix(
    model,
    experts: list[Expert],
    examples: list[bytes],
    patcher,
    entropy_model=None,
    iterations: int = 6,
    population: int = 12,
    elite: int = 3,
    seed: int = 0,
) -> Choice:
    """CEM over α (base first, then the experts) minimising the bpb of the few-shot examples."""
    _check(model, experts)
    if not examples:
        raise ValueError("--dispatch mix needs few-shot examples of the target task")
    ones = {name: torch.ones_like(v) for name, v in experts[0].z.items()}
    parts = [ones] + [e.z for e in experts]
    names = ["base"] + [e.name for e in experts]
    tried: list[tuple[float, list[float]]] = []

    def score(alpha: list[float]) -> float:
        set_z(model, mix_z(parts, alpha))
        value = bpb(model, examples, patcher, entropy_model)
        tried.append((value, alpha))
        return value

    n = len(parts)
    for k in range(n):  # the base model and each expert alone
        score([1.0 if i == k else 0.0 for i in range(n)])
    gen = torch.Generator().manual_seed(seed)
    mean, std = torch.full((n,), 1.0 / n), torch.full((n,), 0.5)
    for _ in range(iterations):
        samples = mean + std * torch.randn(population, n, generator=gen)
        values = [score(s.tolist()) for s in samples]
        best = torch.tensor(values).argsort()[:elite]
        mean, std = samples[best].mean(0), samples[best].std(0).clamp_min(0.02)
    value, alpha = min(tried, key=lambda t: t[0])
    set_z(model, None)
    base_bpb = tried[0][0]
    return Choice(
        mix_z(parts, alpha),
        dict(zip(names, alpha)),
        {"few_shot_bpb": value, "few_shot_bpb_base": base_bpb, "candidates": float(len(tried))},
    )


def choose(
    mode: str, model, experts: list[Expert], prompt: bytes, patcher, entropy_model=None, few_shot=None
) -> Choice:
    """Pass one. mix uses `few_shot` texts when given, else the prompt itself."""
    if mode == "prompt":
        return by_prompt(model, experts, prompt, patcher, entropy_model)
    if mode == "classifier":
        return by_classifier(model, experts, prompt, patcher, entropy_model)
    if mode == "mix":
        return by_mix(model, experts, few_shot or [prompt], patcher, entropy_model)
    raise ValueError(f"--dispatch must be one of {', '.join(DISPATCH)}, got {mode!r}")


def _one_hot(experts: list[Expert], chosen: str) -> dict[str, float]:
    return {e.name: 1.0 if e.name == chosen else 0.0 for e in experts}
