"""Patchers and hash n-grams against brute-force per-byte references on random inputs."""

import pytest
import torch

from blt_scale.model.ngram import BASE, PRIME, HashNgramEmbedding, NgramConfig, ngram_hashes
from blt_scale.model.patcher import (
    PatcherConfig,
    calibrate_threshold,
    closed_patches,
    lengths_from_starts,
    mean_patch_bytes,
    patch_ids_from_lengths,
    patch_lengths,
    patch_lengths_with_next,
    patch_starts,
)
from blt_scale.model.vocab import BOS, EOS, OFFSET


def space_like(i: int) -> bool:
    b = i - OFFSET
    return not (chr(b).isascii() and chr(b).isalnum()) and not 0x80 <= b <= 0xBF if b >= 0 else True


def brute_starts(ids: list[int], h: list[float], cfg: PatcherConfig) -> list[bool]:
    out, run = [], 0
    for t, _ in enumerate(ids):
        if t == 0 or ids[t - 1] == EOS:
            start = True
        elif cfg.mode == "entropy":
            high = h[t - 1] > cfg.threshold
            rise = (h[t - 1] - h[t - 2] if t >= 2 else 0.0) > cfg.relative_threshold
            start = {"global": high, "monotonic": rise, "both": high and rise}[cfg.entropy_rule]
        elif cfg.mode == "space":
            # a space-like byte that follows a non-space-like one (or the row start) ends a patch
            start = space_like(ids[t - 1]) and (t == 1 or not space_like(ids[t - 2])) and ids[t - 1] != BOS
        elif cfg.mode == "static":
            start = t % cfg.static_size == 0
        else:
            start = True
        run = 0 if start else run + 1
        if cfg.max_patch_len is not None and run == cfg.max_patch_len:
            start, run = True, 0
        out.append(start)
    return out


CONFIGS = [
    PatcherConfig(mode="entropy", entropy_rule="global", threshold=1.0),
    PatcherConfig(mode="entropy", entropy_rule="monotonic", relative_threshold=0.2),
    PatcherConfig(
        mode="entropy", entropy_rule="both", threshold=0.8, relative_threshold=0.1, max_patch_len=5
    ),
    PatcherConfig(mode="space"),
    PatcherConfig(mode="space", max_patch_len=3),
    PatcherConfig(mode="static", static_size=3),
    PatcherConfig(mode="static", static_size=8, max_patch_len=5),
    PatcherConfig(mode="byte"),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.mode}-{c.entropy_rule}-{c.max_patch_len}")
def test_patch_starts_equal_brute_force(cfg):
    g = torch.Generator().manual_seed(0)
    # Mostly printable ASCII with spaces, some high bytes and specials, so every rule fires.
    ids = torch.randint(OFFSET, OFFSET + 256, (4, 97), generator=g)
    ids[:, ::7] = OFFSET + ord(" ")
    ids[1, 39:41] = torch.tensor([EOS, BOS])
    ids[2, 60:63] = torch.tensor([OFFSET + ord("\n"), EOS, BOS])  # EOS after a space-like byte still ends
    h = torch.rand(4, 97, generator=g) * 2
    got = patch_starts(ids, cfg, h)
    for row in range(4):
        assert got[row].tolist() == brute_starts(ids[row].tolist(), h[row].tolist(), cfg)
    lengths = lengths_from_starts(got)
    assert (lengths.sum(1) == 97).all()
    if cfg.max_patch_len:
        assert lengths.max() <= cfg.max_patch_len


def test_space_patches_end_after_the_first_space_like_byte():
    ids = torch.tensor([[BOS] + [OFFSET + b for b in b"the quick  brown"] + [EOS, BOS, OFFSET + ord("a")]])
    lengths = patch_lengths(ids, PatcherConfig(mode="space"))[0].tolist()
    pieces, at = [], 0
    for n in lengths:
        pieces.append(ids[0, at : at + n].tolist())
        at += n
    text = [bytes(i - OFFSET if i >= OFFSET else ord("|") for i in p) for p in pieces]
    assert text == [b"|the ", b"quick ", b" brown|", b"|a"]  # | marks BOS/EOS


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.mode}-{c.entropy_rule}-{c.max_patch_len}")
def test_closed_patches_equal_brute_force(cfg):
    """A patch is complete at byte t when the next byte starts a patch; the last byte's patch is
    complete only when lengths cover the next byte too (patch_lengths_with_next)."""
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(OFFSET, OFFSET + 256, (3, 41), generator=g)
    ids[:, ::4] = OFFSET + ord(" ")
    h = torch.rand(3, 41, generator=g) * 2
    starts = patch_starts(ids, cfg, h)
    whole = patch_starts(torch.cat([ids, ids[:, :1]], 1), cfg, torch.cat([h, h[:, :1]], 1))
    for lengths, known_next in (
        (patch_lengths(ids, cfg, h), False),
        (patch_lengths_with_next(ids, cfg, h), True),
    ):
        got = closed_patches(lengths, 41)
        for b in range(3):
            for t in range(41):
                complete = int(starts[b, 1 : t + 2].sum()) + (
                    int(whole[b, 41]) if t == 40 and known_next else 0
                )
                assert got[b, t] == complete


def test_patch_ids_from_lengths_equal_brute_force():
    lengths = torch.tensor([[3, 1, 4, 2, 0, 0], [1, 1, 1, 1, 1, 5]])
    expected = [[p for p, n in enumerate(row) for _ in range(n)] for row in lengths.tolist()]
    assert patch_ids_from_lengths(lengths, 10).tolist() == expected


def test_patching_a_prefix_gives_the_prefix_of_the_patching():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(OFFSET, OFFSET + 256, (2, 80), generator=g)
    h = torch.rand(2, 80, generator=g) * 2
    for cfg in CONFIGS:
        full = patch_starts(ids, cfg, h)
        for t in (1, 17, 50):
            assert torch.equal(patch_starts(ids[:, :t], cfg, h[:, :t]), full[:, :t])


@pytest.mark.parametrize("rule", ["global", "monotonic", "both"])
def test_calibration_hits_the_target_mean_patch_size(rule):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(OFFSET, OFFSET + 256, (8, 512), generator=g)
    h = torch.rand(8, 512, generator=g).pow(2) * 4
    cfg = PatcherConfig(mode="entropy", entropy_rule=rule, relative_threshold=0.0)
    for target in (2.5, 4.5):
        tuned = calibrate_threshold(ids, h, cfg, target)
        assert abs(mean_patch_bytes(ids, tuned, h) - target) / target < 0.02


def test_calibration_rejects_an_unreachable_target():
    ids = torch.full((1, 64), OFFSET)
    with pytest.raises(ValueError, match="outside"):
        calibrate_threshold(ids, torch.rand(1, 64), PatcherConfig(mode="entropy", max_patch_len=4), 10.0)


def test_entropy_mode_without_entropies_is_a_clear_error():
    with pytest.raises(ValueError, match="entropies"):
        patch_starts(torch.full((1, 4), OFFSET), PatcherConfig(mode="entropy"))


@pytest.mark.parametrize("length", [40, 5])  # 5: shorter than the longest n-gram (a short prompt)
@pytest.mark.parametrize("with_docs", [False, True])
def test_ngram_hashes_equal_brute_force(with_docs, length):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 259, (3, length), generator=g)
    docs = (
        torch.randint(0, 2, (3, length), generator=g).cumsum(1)
        if with_docs
        else torch.zeros(3, length, dtype=torch.long)
    )
    for n in (3, 5, 8):
        got = ngram_hashes(ids, n, docs if with_docs else None)
        for b in range(3):
            row, doc = ids[b].tolist(), docs[b].tolist()
            for t in range(length):
                h = 0
                for j in range(
                    t - n + 1, t + 1
                ):  # oldest first; before the start or the document counts as 0
                    h = (h * BASE + (row[j] + 1 if j >= 0 and doc[j] == doc[t] else 0)) % PRIME
                assert got[b, t] == h


def test_hash_embedding_sums_the_rows_of_every_n():
    emb = HashNgramEmbedding(NgramConfig(sizes=[3, 4], buckets=101), dim=8)
    ids = torch.randint(0, 259, (2, 12))
    expected = torch.zeros(2, 12, 8)
    for b in range(2):
        for t in range(12):
            for n, table in zip([3, 4], emb.tables):
                expected[b, t] += table.weight[int(ngram_hashes(ids, n)[b, t]) % 101]
    torch.testing.assert_close(emb(ids), expected)
