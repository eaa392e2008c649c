"""Titans memory: the chunk-parallel memory against a token-by-token loop whose inner gradients come
from autograd, MAC against a token-by-token loop with explicit attention, document resets,
causality inside a BLT, and the FLOP and parameter accounting."""

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from blt_scale.model.attention import Causal
from blt_scale.model.blt import BLT, BLTConfig
from blt_scale.model.build import build_model
from blt_scale.model.flops import attention_per_key, memory_attention_keys, memory_parts, model_flops
from blt_scale.model.layers import rope
from blt_scale.model.memory import MemoryConfig, NeuralMemory
from blt_scale.model.patcher import PatcherConfig, patch_lengths
from blt_scale.model.titans import LatentConfig, TitansBlock
from blt_scale.model.vocab import EOS, OFFSET, encode
from blt_scale.train.recipe import load_recipe


def mlp(weights, a):
    """a [B, H, in] through per-row weights [B, H, out, in], SiLU between layers."""
    for i, w in enumerate(weights):
        a = (w @ a[..., None]).squeeze(-1)
        a = F.silu(a) if i < len(weights) - 1 else a
    return a


class Sequential:
    """The memory one position at a time: weights and momentum as explicit tensors, the write's
    gradient by autograd at the base weights (the chunk's start, or the initial weights after a
    reset inside the chunk), then the read of the memory after the write."""

    def __init__(self, mem: NeuralMemory, batch: int):
        self.mem, self.chunk = mem, mem.cfg.chunk
        self.init = [w.float().expand(batch, *w.shape) for w in mem.initial]
        self.weights, self.momentum = list(self.init), [torch.zeros_like(w) for w in self.init]
        self.base = self.weights

    def enter(self, t: int, fresh: torch.Tensor) -> None:
        """Position t; fresh [B]: it starts a document."""
        r = fresh[:, None, None, None]
        self.weights = [torch.where(r, i, w) for i, w in zip(self.init, self.weights)]
        self.momentum = [torch.where(r, 0.0, s) for s in self.momentum]
        if t % self.chunk == 0:
            self.base = self.weights
        else:
            self.base = [torch.where(r, i, b) for i, b in zip(self.init, self.base)]

    def read_base(self, q):
        return mlp(self.base, q)

    def write_read(self, k, v, log_beta, log_eta, theta, q):
        # The partial derivative in the weights: k and v may depend on them too (MAC's k and v come
        # from attention over a read of these weights), so differentiate through an alias.
        base = [b.view_as(b) for b in self.base]
        loss = (mlp(base, k) - v).pow(2).sum()
        grads = torch.autograd.grad(loss, base, create_graph=True)
        beta, eta, theta = (g[..., None, None] for g in (log_beta.exp(), log_eta.exp(), theta))
        self.momentum = [eta * s - theta * g for s, g in zip(self.momentum, grads)]
        self.weights = [beta * w + s for w, s in zip(self.weights, self.momentum)]
        return mlp(self.weights, q)


def fresh_at(doc, t: int, batch: int) -> torch.Tensor:
    if t == 0:
        return torch.ones(batch, dtype=torch.bool)
    if doc is None:
        return torch.zeros(batch, dtype=torch.bool)
    return doc[:, t] != doc[:, t - 1]


def sequential_memory(mem: NeuralMemory, x, doc):
    k, v, lb, le, th = mem.keys_values(x)
    q = mem.queries(x)
    loop, reads = Sequential(mem, x.shape[0]), []
    for t in range(x.shape[1]):
        loop.enter(t, fresh_at(doc, t, x.shape[0]))
        reads.append(
            loop.write_read(k[:, :, t], v[:, :, t], lb[:, :, t], le[:, :, t], th[:, :, t], q[:, :, t])
        )
    return mem.out(torch.stack(reads, dim=2), x)


def documents(B: int, T: int) -> torch.Tensor:
    doc = torch.zeros(B, T, dtype=torch.long)
    doc[1, 6:] = 1  # inside the first chunk of 16
    doc[1, 16:] = 2  # on a chunk boundary for chunks 4 and 16
    doc[1, 23:] = 3
    return doc


def assert_same_forward_and_grads(module, x, got, want):
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    probe = torch.randn_like(got)
    params = [x, *module.parameters()]
    names = ["x"] + [n for n, _ in module.named_parameters()]
    g1 = torch.autograd.grad((got * probe).sum(), params, allow_unused=True)
    g2 = torch.autograd.grad((want * probe).sum(), params, allow_unused=True)
    for name, a, b in zip(names, g1, g2):
        assert b is not None and b.abs().max() > 0, f"{name} gets no gradient"
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-3, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("chunk", [1, 4, 16])
@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("with_docs", [False, True], ids=["no-docs", "docs"])
def test_chunk_parallel_memory_equals_the_token_loop(chunk, depth, with_docs):
    torch.manual_seed(chunk + depth)
    mem = NeuralMemory(MemoryConfig(heads=2, depth=depth, hidden_mult=1.5, chunk=chunk), 16)
    T = 37  # a partial last chunk
    x = torch.randn(2, T, 16, requires_grad=True)
    doc = documents(2, T) if with_docs else None
    assert_same_forward_and_grads(mem, x, mem(x, doc), sequential_memory(mem, x, doc))


def test_the_memory_remembers_more_than_its_chunk():
    """Reads of a later chunk depend on an earlier chunk's keys, and do not when a document starts
    between them."""
    torch.manual_seed(0)
    mem = NeuralMemory(MemoryConfig(heads=2, chunk=4), 16)
    x = torch.randn(1, 24, 16)
    other = x.clone()
    other[:, :4] = torch.randn(1, 4, 16)
    with torch.no_grad():
        assert not torch.allclose(mem(x)[:, 20:], mem(other)[:, 20:])
        doc = torch.zeros(1, 24, dtype=torch.long)
        doc[:, 10:] = 1
        torch.testing.assert_close(mem(x, doc)[:, 10:], mem(other, doc)[:, 10:])


def mac_reference(block: TitansBlock, x, doc):
    """MAC one patch at a time: the read before the segment, attention by an explicit softmax over
    the segment's read-outs and patches so far (same document), the write of the attention output."""
    mem, attn = block.memory, block.attn
    B, T, D = x.shape
    H, d = attn.heads, attn.head_dim
    h = block.attn_norm(x)
    recall_q = mem.queries(h)
    loop = Sequential(mem, B)
    keys, values, docs, outs = [], [], [], []

    def heads(w, a, pos):  # one position [B, D] -> [B, H, d], rotated for q and k
        out = (a @ w.weight.T).view(B, H, 1, d)
        return out[:, :, 0] if pos is None else rope(out, torch.tensor([pos]), attn.rope_theta)[:, :, 0]

    for t in range(T):
        loop.enter(t, fresh_at(doc, t, B))
        if t % mem.cfg.chunk == 0:  # a segment: the persistent tokens just before its first position
            tokens = [] if block.persistent is None else block.persistent
            n = len(tokens)
            keys = [heads(attn.wk, p.expand(B, D), 2 * t - n + i) for i, p in enumerate(tokens)]
            values = [heads(attn.wv, p.expand(B, D), None) for p in tokens]
            docs = [None] * n  # seen by every query
        recalled = mem.out(loop.read_base(recall_q[:, :, t])[:, :, None], h[:, t : t + 1])[:, 0]
        for pos, a in ((2 * t, recalled), (2 * t + 1, h[:, t])):
            keys.append(heads(attn.wk, a, pos))
            values.append(heads(attn.wv, a, None))
            docs.append(doc[:, t] if doc is not None else torch.zeros(B, dtype=torch.long))
        q = heads(attn.wq, h[:, t], 2 * t + 1)
        scores = torch.stack([(q * k).sum(-1) for k in keys], -1) / math.sqrt(d)  # [B, H, S]
        same = torch.stack(
            [torch.ones(B, dtype=torch.bool) if dk is None else dk == docs[-1] for dk in docs], -1
        )
        same = same[:, None]
        weights = torch.softmax(scores.masked_fill(~same, float("-inf")), -1)
        y = attn.wo((weights[..., None] * torch.stack(values, 2)).sum(2).reshape(B, D))
        k, v, lb, le, th = mem.keys_values(y[:, None])
        read = loop.write_read(
            k[:, :, 0], v[:, :, 0], lb[:, :, 0], le[:, :, 0], th[:, :, 0], mem.queries(y[:, None])[:, :, 0]
        )
        outs.append(y * torch.sigmoid(block.gate_norm(mem.out(read[:, :, None], y[:, None])[:, 0])))
    x = x + torch.stack(outs, 1)
    return x + block.ffn(block.ffn_norm(x))


@pytest.mark.parametrize("chunk,persistent", [(1, 0), (4, 0), (16, 0), (4, 3)])
@pytest.mark.parametrize("with_docs", [False, True], ids=["no-docs", "docs"])
def test_memory_as_context_equals_the_token_loop(chunk, persistent, with_docs):
    torch.manual_seed(chunk)
    memory = MemoryConfig(variant="mac", heads=2, chunk=chunk, persistent=persistent)
    cfg = LatentConfig(dim=16, layers=1, heads=2, memory=memory)
    block = TitansBlock(cfg, 0)
    T = 37
    x = torch.randn(2, T, 16, requires_grad=True)
    doc = documents(2, T) if with_docs else None
    got = block(x, Causal(T, None, doc, "chunked"))
    assert_same_forward_and_grads(block, x, got, mac_reference(block, x, doc))


def windowed_attention_after_persistent(block: TitansBlock, h, window: int, doc):
    """Explicit softmax: the persistent tokens prepended at positions -N..-1, seen by every query;
    then the causal window within the query's document."""
    attn, (B, T, _) = block.attn, h.shape
    tokens = block.persistent if block.persistent is not None else h.new_zeros(0, h.shape[-1])
    n = tokens.shape[0]
    q, k, v = attn.project(torch.cat([tokens.expand(B, n, -1), h], 1), positions=torch.arange(-n, T))
    pos = torch.arange(T)
    seen = (pos[:, None] >= pos[None, :]) & (pos[:, None] - pos[None, :] < window)
    seen = (
        seen[None] & (doc[:, :, None] == doc[:, None, :]) if doc is not None else seen[None].expand(B, T, T)
    )
    seen = torch.cat([torch.ones(B, T, n, dtype=torch.bool), seen], -1)[:, None]
    scores = (q[:, :, n:] @ k.transpose(-1, -2) / math.sqrt(attn.head_dim)).masked_fill(~seen, float("-inf"))
    return attn.merge(torch.softmax(scores, -1) @ v)


@pytest.mark.parametrize("persistent", [0, 3])
@pytest.mark.parametrize("with_docs", [False, True], ids=["no-docs", "docs"])
def test_memory_as_gating_is_attention_times_the_gated_memory(persistent, with_docs):
    torch.manual_seed(0)
    memory = MemoryConfig(heads=2, chunk=4, persistent=persistent)
    block = TitansBlock(LatentConfig(dim=16, layers=1, heads=2, window=5, memory=memory), 0)
    x = torch.randn(2, 30, 16, requires_grad=True)
    doc = documents(2, 30) if with_docs else None
    h = block.attn_norm(x)
    gate = torch.sigmoid(block.gate_norm(sequential_memory(block.memory, h, doc)))
    want = x + windowed_attention_after_persistent(block, h, 5, doc) * gate
    want = want + block.ffn(block.ffn_norm(want))
    assert_same_forward_and_grads(block, x, block(x, Causal(30, 5, doc, "chunked")), want)


def test_no_persistent_tokens_add_no_parameters():
    """persistent: 0 is the block without them (checkpoints and FLOPs unchanged)."""
    cfg = LatentConfig(dim=16, layers=1, heads=2, memory=MemoryConfig(heads=2))
    names = {n for n, _ in TitansBlock(cfg, 0).named_parameters()}
    with_tokens = cfg.model_copy(update={"memory": cfg.memory.model_copy(update={"persistent": 2})})
    assert {n for n, _ in TitansBlock(with_tokens, 0).named_parameters()} == names | {"persistent"}


def tiny_titans_blt(variant: str, doc_mask: bool = False, persistent: int = 0) -> BLT:
    torch.manual_seed(0)
    local = {"dim": 32, "layers": 1, "heads": 2, "window": 8}
    window = 4 if variant == "mag" else None
    return BLT(
        BLTConfig.model_validate(
            {
                "encoder": local,
                "global": {
                    "dim": 48,
                    "layers": 2,
                    "heads": 2,
                    "window": window,
                    "memory": {"variant": variant, "heads": 2, "chunk": 4, "persistent": persistent},
                },
                "decoder": local,
                "ngram": {"sizes": [3, 4], "buckets": 97},
                "doc_mask": doc_mask,
                "attention": "chunked",
            }
        )
    ).eval()


@pytest.mark.parametrize("variant,persistent", [("mag", 0), ("mac", 0), ("mag", 3), ("mac", 3)])
def test_future_bytes_never_change_past_logits(variant, persistent):
    model = tiny_titans_blt(variant, doc_mask=True, persistent=persistent)
    patcher = PatcherConfig(mode="space", max_patch_len=6)
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(OFFSET, OFFSET + 256, (2, 120), generator=g)
    ids[:, ::4] = OFFSET + ord(" ")
    ids[:, 60] = EOS
    with torch.no_grad():
        base = model(ids, patch_lengths(ids, patcher))
        for t in (0, 23, 60, 101):
            changed = ids.clone()
            changed[:, t + 1 :] = torch.randint(OFFSET, OFFSET + 256, changed[:, t + 1 :].shape, generator=g)
            other = model(changed, patch_lengths(changed, patcher))
            torch.testing.assert_close(other[:, : t + 1], base[:, : t + 1], atol=1e-5, rtol=1e-5)
            assert not torch.allclose(other[:, t + 1 :], base[:, t + 1 :])


@pytest.mark.parametrize("variant", ["mag", "mac"])
def test_a_document_never_sees_the_previous_one(variant):
    model, patcher = tiny_titans_blt(variant, doc_mask=True), PatcherConfig(mode="space")
    first = encode(b"alpha beta gamma delta epsilon zeta", bos=True, eos=True)
    other = encode(b"qqqqq zzzz xxxxx yyyyy wwwwwww vvvv", bos=True, eos=True)
    second = encode(b"eta theta iota kappa lambda mu nu xi", bos=True, eos=True)
    with torch.no_grad():
        a = model(torch.cat([first, second])[None], patch_lengths(torch.cat([first, second])[None], patcher))
        b = model(torch.cat([other, second])[None], patch_lengths(torch.cat([other, second])[None], patcher))
    n = len(first)
    torch.testing.assert_close(a[:, n:], b[:, n:], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, :n], b[:, :n])


def block_flops(block: TitansBlock, x: torch.Tensor, pattern: Causal, math: bool = False) -> dict[str, float]:
    """FLOPs by op; `math`: SDPA as its math kernel's matmuls, which torch counts (every key of the
    mask, visible or not), where CPU's fused kernel goes uncounted."""
    with FlopCounterMode(display=False) as counter:
        with sdpa_kernel(SDPBackend.MATH) if math else contextlib.nullcontext():
            block(x, pattern)
    return {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("variant", ["mag", "mac"])
@pytest.mark.parametrize("depth,persistent", [(1, 0), (2, 0), (1, 3)])
def test_memory_flops_equal_what_torch_counts(variant, depth, persistent):
    """Weight products (mm) and the memory's own products (bmm) of one block, 4 full chunks; the
    persistent tokens' keys with dense masks, where torch counts every key a query may see."""
    memory = MemoryConfig(variant=variant, heads=3, chunk=8, depth=depth, persistent=persistent)
    cfg = LatentConfig(dim=48, layers=1, heads=4, memory=memory)
    block = TitansBlock(cfg, 0)
    x = torch.randn(1, 32, 48)  # one row: a batch shares the persistent tokens' projections
    counts = block_flops(block, x, Causal(32, None, None, "auto"))
    params, linear, inner = memory_parts(cfg, 32)
    block_linear = 2 * (4 * 48 * 48 + 3 * 48 * cfg.ffn_dim)
    assert counts["aten.mm"] == (linear + block_linear) * 32
    assert counts["aten.bmm"] == inner * 32
    own = [block.memory, block.gate_norm] + ([block.persistent] if persistent else [])
    assert params == sum(
        p.numel() for m in own for p in ([m] if isinstance(m, torch.Tensor) else m.parameters())
    )
    if persistent:
        plain_cfg = cfg.model_copy(update={"memory": memory.model_copy(update={"persistent": 0})})
        dense = Causal(32, None, None, "dense")
        extra = sum(block_flops(block, x, dense, math=True).values()) - sum(
            block_flops(TitansBlock(plain_cfg, 0), x, dense, math=True).values()
        )
        keys = memory_attention_keys(cfg, 32) - memory_attention_keys(plain_cfg, 32)
        assert extra == 32 * (attention_per_key(cfg) * keys + linear - memory_parts(plain_cfg, 32)[1])


@pytest.mark.parametrize("recipe", ["cpu_tiny_titans", "cpu_tiny_titans_mac", "cpu_tiny_titans_persistent"])
def test_recipe_parameters_and_linear_flops_equal_the_model(recipe):
    from test_flops import real_batch

    cfg = load_recipe(recipe)
    assert cfg.model.global_.memory is not None
    model = build_model(cfg.model)
    assert model_flops(cfg.model, cfg.data.seq_len, 4.0).total_params == sum(
        p.numel() for p in model.parameters()
    )
    ids = real_batch(cfg.data.seq_len, rows=1)
    lengths = patch_lengths(ids, cfg.patcher)
    report = model_flops(cfg.model, cfg.data.seq_len, ids.shape[1] / lengths.shape[1])
    with FlopCounterMode(display=False) as counter:
        model(ids, lengths)
    mm = sum(v for k, v in counter.get_flop_counts()["Global"].items() if str(k) == "aten.mm")
    assert sum(report.linear.values()) * ids.numel() == pytest.approx(mm, rel=0.01)


def test_mac_with_a_window_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="set the latent window"):
        LatentConfig(dim=16, layers=1, heads=2, window=8, memory=MemoryConfig(variant="mac"))


@pytest.mark.parametrize("variant", ["mag", "mac"])
def test_bf16_parameters_follow_fp32(variant):
    """FSDP's bf16 policy casts parameters: the memory computes in fp32 inside and stays close."""
    model, patcher = tiny_titans_blt(variant, doc_mask=True), PatcherConfig(mode="space")
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(OFFSET, OFFSET + 256, (2, 100), generator=g)
    ids[:, ::5] = OFFSET + ord(" ")
    lengths = patch_lengths(ids, patcher)
    with torch.no_grad():
        want = model(ids, lengths)
    got = model.to(torch.bfloat16).train()(ids, lengths)
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() < 0.05
    got.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_a_query_recalls_the_value_written_chunks_earlier():
    """Associative recall by the mechanism alone: identity keys and queries, a rotation as the
    value map, no forgetting. Writing (e_2 -> R e_2) at position 2 changes the read of query e_2 at
    position 12 (two chunks later, after 8 empty positions) along R e_2 and nothing else."""
    torch.manual_seed(0)
    dim = 8
    mem = NeuralMemory(MemoryConfig(heads=1, chunk=4), dim)
    rotation = torch.linalg.qr(torch.randn(dim, dim))[0]
    with torch.no_grad():
        for w, value in (
            (mem.wq, torch.eye(dim)),
            (mem.wk, torch.eye(dim)),
            (mem.wv, rotation),
            (mem.wo, torch.eye(dim)),
        ):
            w.weight.copy_(value)
        mem.gates.weight.zero_()
        mem.gate_bias.copy_(torch.tensor([[-30.0], [0.0], [30.0]]))  # α ≈ 0, η = 0.5, θ = max_step
        mem.initial[0].zero_()
    eye = torch.eye(dim)
    x = torch.zeros(1, 13, dim)
    x[0, :4] = eye[:4]
    x[0, 12] = eye[2]
    control = x.clone()
    control[0, 2] = eye[5]  # key 2 never written
    with torch.no_grad():
        change = mem(x)[0, 12] - mem(control)[0, 12]
    stored = rotation @ eye[2]
    assert F.cosine_similarity(change, stored, dim=0) > 0.999
    assert change.norm() > 0.05  # θ / (1 - η) * 2 ||v|| = 0.08 written, less the second write's pull
