"""Generation: cached equals the full-forward reference, sampling, batches, stop strings, CLI errors."""

import json

import pytest
import torch

from blt_scale.checkpoint.export import save_exported
from blt_scale.cli import main
from blt_scale.model.blt import BLT, BLTConfig
from blt_scale.model.build import build_model
from blt_scale.model.byte_lm import ByteLM, ByteLMConfig
from blt_scale.model.generate import _Stops, generate_batch
from blt_scale.model.incremental import make_stepper
from blt_scale.model.patcher import PatcherConfig, patch_lengths_with_next
from blt_scale.model.sampling import choose, sampling_probs
from blt_scale.model.vocab import encode
from blt_scale.train.recipe import load_recipe

WINDOW = 8


def tiny_blt(**kw) -> BLT:
    torch.manual_seed(0)
    return BLT(
        BLTConfig.model_validate(
            {
                "encoder": {"dim": 32, "layers": 1, "heads": 2, "window": WINDOW},
                "global": {"dim": 48, "layers": 2, "heads": 2},
                "decoder": {"dim": 32, "layers": 2, "heads": 2, "window": WINDOW},
                "ngram": {"sizes": [3, 8], "buckets": 97},
                **kw,
            }
        )
    ).eval()


def tiny_lm(window=6, seed=0) -> ByteLM:
    torch.manual_seed(seed)
    return ByteLM(ByteLMConfig(dim=32, layers=2, heads=2, window=window)).eval()


ENTROPY_LM = tiny_lm(window=6, seed=3)
CASES = {
    "baseline": (lambda: tiny_lm(window=None), PatcherConfig(mode="byte")),
    "baseline-window": (lambda: tiny_lm(window=WINDOW), PatcherConfig(mode="byte")),
    "blt-space": (tiny_blt, PatcherConfig(mode="space", max_patch_len=6)),
    "blt-static": (tiny_blt, PatcherConfig(mode="static", static_size=3)),
    "blt-entropy-global": (tiny_blt, PatcherConfig(mode="entropy", entropy_rule="global", threshold=5.5)),
    "blt-entropy-monotonic": (
        lambda: tiny_blt(doc_mask=True, decoder_cross_window=2),
        PatcherConfig(mode="entropy", entropy_rule="monotonic", relative_threshold=0.0),
    ),
}
PROMPTS = {"short": b"a", "long": b"The quick brown fox jumps over the lazy dog; " * 2}


def full_logits(model, ids, patcher):
    if isinstance(model, ByteLM):
        return model(ids)
    h = ENTROPY_LM.entropies(ids) if patcher.mode == "entropy" else None
    return model(ids, patch_lengths_with_next(ids, patcher, h))


def assert_cached_equals_the_reference(model, patcher, ids, new_bytes: int, tol: float = 1e-4) -> int:
    """Greedy generation with caches and by full recomputation: the same bytes and patches; and the
    cached logits of every position (a prefill, then byte by byte) equal one full forward within
    tol. Returns the patches."""
    common = dict(entropy_model=ENTROPY_LM, stop_at_eos=False)
    cached = generate_batch(model, [ids], new_bytes, patcher, **common)[0]
    reference = generate_batch(model, [ids], new_bytes, patcher, cache=False, **common)[0]
    assert cached.ids == reference.ids and len(cached.ids) == new_bytes
    assert cached.patches == reference.patches
    seq = torch.cat([ids, torch.tensor(cached.ids)])[None]
    stepper = make_stepper(model, 1, patcher, ENTROPY_LM)
    n = ids.numel()
    got = [stepper.step(seq[:, :n], torch.ones(1, n, dtype=torch.bool))]
    got += [
        stepper.step(seq[:, t : t + 1], torch.ones(1, 1, dtype=torch.bool)) for t in range(n, seq.shape[1])
    ]
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(got, 1), full_logits(model, seq, patcher), atol=tol, rtol=tol)
    return cached.patches


@pytest.mark.parametrize("prompt", PROMPTS, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_cached_greedy_equals_the_reference_for_300_bytes(case, prompt):
    make, patcher = CASES[case]
    assert_cached_equals_the_reference(make(), patcher, encode(PROMPTS[prompt], bos=True), 300)


@pytest.mark.parametrize("case", ["baseline-window", "blt-space", "blt-entropy-monotonic"])
def test_a_left_padded_batch_equals_one_prompt_at_a_time(case):
    make, patcher = CASES[case]
    model = make()
    prompts = [encode(p, bos=True) for p in (b"x", b"def main(argv):\n    return 0\n", b"hello world")]
    batch = generate_batch(model, prompts, 60, patcher, entropy_model=ENTROPY_LM, stop_at_eos=False)
    for prompt, got in zip(prompts, batch):
        alone = generate_batch(model, [prompt], 60, patcher, entropy_model=ENTROPY_LM, stop_at_eos=False)[0]
        assert got.ids == alone.ids and got.patches == alone.patches


def brute_probs(logits, temperature, top_k, top_p):
    out = []
    for row in logits.tolist():
        scaled = [x / temperature for x in row]
        order = sorted(range(len(row)), key=lambda i: -scaled[i])
        allowed = set(order[:top_k] if top_k else order)
        z = sum(torch.tensor(scaled[i]).exp().item() for i in allowed)
        p = {i: torch.tensor(scaled[i]).exp().item() / z for i in allowed}
        if top_p is not None:
            kept, mass = set(), 0.0
            for i in sorted(p, key=lambda i: -p[i]):
                if mass >= top_p:
                    break
                kept.add(i)
                mass += p[i]
            z = sum(p[i] for i in kept)
            p = {i: p[i] / z for i in kept}
        out.append([p.get(i, 0.0) for i in range(len(row))])
    return torch.tensor(out)


@pytest.mark.parametrize(
    "temperature,top_k,top_p", [(1.0, None, None), (0.7, 5, None), (1.3, None, 0.6), (0.9, 8, 0.5)]
)
def test_sampling_probabilities_equal_a_brute_force_sampler(temperature, top_k, top_p):
    logits = torch.randn(3, 20, generator=torch.Generator().manual_seed(0)) * 2
    torch.testing.assert_close(
        sampling_probs(logits, temperature, top_k, top_p),
        brute_probs(logits, temperature, top_k, top_p),
        atol=1e-5,
        rtol=1e-4,
    )
    draws = torch.stack(
        [choose(logits, temperature, top_k, top_p, torch.Generator().manual_seed(s)) for s in range(300)]
    )
    support = sampling_probs(logits, temperature, top_k, top_p) > 0
    assert all(bool(support[r, draws[:, r]].all()) for r in range(3))


def test_seeded_sampling_is_reproducible():
    model, patcher = tiny_blt(), PatcherConfig(mode="space")
    prompt = [encode(b"seed", bos=True)]

    def run(seed):
        return generate_batch(
            model,
            prompt,
            40,
            patcher,
            temperature=1.0,
            top_p=0.9,
            generator=torch.Generator().manual_seed(seed),
            stop_at_eos=False,
        )[0].ids

    assert run(1) == run(1) and run(1) != run(2)


def test_stop_strings_end_the_text_before_them_and_are_never_streamed():
    model, patcher = tiny_lm(), PatcherConfig(mode="byte")
    prompt = [encode(b"abc", bos=True)]
    free = generate_batch(model, prompt, 60, patcher, stop_at_eos=False)[0].text
    stop = free[20:23]
    streamed = []
    got = generate_batch(
        model,
        prompt,
        60,
        patcher,
        stops=[stop, b"\x00never"],
        stop_at_eos=False,
        on_bytes=lambda r, b: streamed.append(b),
    )[0]
    assert got.text == free[: free.find(stop)] and b"".join(streamed) == got.text
    scanner = _Stops([b"END"])
    shown = [scanner.add(b)[0] for b in b"xxEN"]
    assert b"".join(shown) == b"xx" and scanner.add(ord("D")) == (b"", True) and scanner.text == b"xxEN"[:2]


# -- the command ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A tiny entropy-patched BLT and its entropy model, exported without training."""
    root = tmp_path_factory.mktemp("gen")
    small = [
        "model.encoder.dim=32",
        "model.decoder.dim=32",
        "model.global.dim=48",
        "model.encoder.heads=2",
        "model.decoder.heads=2",
        "model.global.heads=2",
        "model.ngram.buckets=97",
    ]
    blt_cfg = load_recipe(
        "cpu_tiny", small + ["patcher.mode=entropy", "patcher.threshold=5.5", f"run_dir={root / 'r'}"]
    )
    lm_cfg = load_recipe(
        "cpu_entropy_model", ["model.dim=32", "model.layers=1", "model.heads=2", f"run_dir={root / 'e'}"]
    )
    torch.manual_seed(0)
    save_exported(build_model(blt_cfg.model).state_dict(), blt_cfg, root / "blt")
    save_exported(build_model(lm_cfg.model).state_dict(), lm_cfg, root / "entropy")
    return root


def test_cli_json_with_cache_equals_no_cache(exports, capsys):
    args = [
        "generate",
        str(exports / "blt"),
        "--prompt",
        "hi",
        "--max-bytes",
        "30",
        "--json",
        "--entropy-model",
        str(exports / "entropy"),
    ]
    assert main(args) == 0
    cached = json.loads(capsys.readouterr().out)
    assert main(args + ["--no-cache"]) == 0
    reference = json.loads(capsys.readouterr().out)
    assert cached["text"] == reference["text"] and cached["patches"] == reference["patches"] > 0
    assert 0 < cached["bytes"] <= 30 and cached["decode_s_per_byte"] > 0 and cached["prefill_s"] > 0


def test_cli_bad_inputs_are_one_line_each(exports, tmp_path, capsys):
    blt, ent = str(exports / "blt"), ["--entropy-model", str(exports / "entropy")]
    cases = [
        (["--prompt", ""] + ent, "prompt 1 is empty"),
        (["--prompt", "x", "--max-bytes", "0"] + ent, "--max-bytes must be at least 1"),
        (["--prompt", "x"], "patcher.entropy_model"),
    ]
    for extra, message in cases:
        assert main(["generate", blt, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "ab"}) + "\n" + json.dumps({"prompt": "longer prompt"}) + "\n")
    assert main(["generate", blt, "--prompts", str(prompts), "--max-bytes", "5", "--json", *ent]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and all(r["bytes"] <= 5 for r in rows)


def test_cli_prompt_file_takes_any_bytes(exports, tmp_path, capsysbinary):
    binary = tmp_path / "prompt.bin"
    binary.write_bytes(b"caf\xe9 \xff\xfe")  # bytes are bytes: invalid UTF-8 is a prompt like any other
    assert (
        main(
            [
                "generate",
                str(exports / "blt"),
                "--prompt-file",
                str(binary),
                "--max-bytes",
                "4",
                "--entropy-model",
                str(exports / "entropy"),
            ]
        )
        == 0
    )
    assert capsysbinary.readouterr().out.startswith(b"caf\xe9 \xff\xfe")


@pytest.mark.parametrize("case", ["baseline-window", "blt-entropy-monotonic"])
def test_bf16_cached_logits_follow_the_bf16_full_forward(case):
    make, patcher = CASES[case]
    model = make().to(torch.bfloat16)
    entropy = tiny_lm(window=6, seed=3).to(torch.bfloat16)
    seq = encode(PROMPTS["long"], bos=True)[None]
    stepper = make_stepper(model, 1, patcher, entropy)
    got = torch.cat(
        [stepper.step(seq[:, :10], torch.ones(1, 10, dtype=torch.bool))]
        + [
            stepper.step(seq[:, t : t + 1], torch.ones(1, 1, dtype=torch.bool))
            for t in range(10, seq.shape[1])
        ],
        1,
    )
    with torch.no_grad():
        h = entropy.entropies(seq) if patcher.mode == "entropy" else None
        want = (
            model(seq) if isinstance(model, ByteLM) else model(seq, patch_lengths_with_next(seq, patcher, h))
        )
    assert got.dtype == torch.bfloat16
    assert (got.float() - want.float()).abs().max() < 0.1 and (
        got.argmax(-1) == want.argmax(-1)
    ).float().mean() > 0.9
