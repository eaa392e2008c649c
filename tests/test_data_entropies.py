"""`blt prep entropies`: stored entropies equal a direct forward of the entropy model, `--part`
runs merged equal one run, and the loader patches rows from the stored entropies."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from data_helpers import (
    read_mds_split,
    split_documents,
    stream_sequences,
)

from blt_scale import cli
from blt_scale.data.calibrate import entropy_sample
from blt_scale.data.loader import DataConfig, build_loader
from blt_scale.data.packing import document_ids
from blt_scale.model.patcher import PatcherConfig, mean_patch_bytes, patch_lengths


def direct(model, doc: bytes) -> np.ndarray:
    """One forward over the whole document, no windows, no batching."""
    return model.entropies(torch.from_numpy(document_ids(doc))[None])[0].numpy()


def test_entropies_equal_a_direct_forward(entropy_dataset):
    tmp, docs, model = entropy_dataset
    total = 0
    for split in ("train", "val"):
        text = [s["text"] for s in read_mds_split(str(tmp / "text"), split, tmp / "c1")]
        samples = read_mds_split(str(tmp / "ent"), split, tmp / "c2")
        assert [s["text"] for s in samples] == text  # same documents, same order
        for s in samples:
            ent = np.frombuffer(s["entropy"], dtype=np.float16).astype(np.float32)
            want = direct(model, s["text"])
            assert ent.shape == want.shape
            np.testing.assert_allclose(ent, want, atol=1e-2, rtol=2e-3)
        total += len(samples)
    assert total == len(docs)
    spread = np.concatenate([direct(model, d) for d in docs[:5]])
    assert spread.max() - spread.min() > 1.0  # the check above compares varied values, not a constant


def assert_same_entropies(expected, got, scratch) -> None:
    """Both entropy datasets hold the same documents in the same order with the same entropies
    (up to float16 rounding of batched vs unbatched forwards)."""
    for split in ("train", "val"):
        one = read_mds_split(str(expected), split, scratch / f"expected_{split}")
        other = read_mds_split(str(got), split, scratch / f"got_{split}")
        assert [s["text"] for s in other] == [s["text"] for s in one]
        for a, b in zip(one, other):
            np.testing.assert_allclose(
                np.frombuffer(a["entropy"], np.float16), np.frombuffer(b["entropy"], np.float16), atol=4e-3
            )


def test_parts_then_merge_equal_a_single_run(entropy_dataset, capsys):
    tmp, _, _ = entropy_dataset
    base = [
        "prep",
        "entropies",
        "--data",
        str(tmp / "text"),
        "--model",
        str(tmp / "model"),
        "--out",
        str(tmp / "parts"),
        "--quiet",
    ]
    assert cli.main([*base, "--part", "1/3"]) == 0
    assert cli.main([*base, "--part", "0/3"]) == 0
    capsys.readouterr()
    assert cli.main(["prep", "entropies", "--out", str(tmp / "parts"), "--merge"]) == 2  # part 2 is missing
    assert "00002-of-00003" in capsys.readouterr().err
    assert not (tmp / "parts" / "_COMPLETE").exists()
    assert cli.main([*base, "--part", "2/3"]) == 0
    assert cli.main(["prep", "entropies", "--out", str(tmp / "parts"), "--merge", "--quiet"]) == 0
    assert_same_entropies(tmp / "ent", tmp / "parts", tmp / "read")
    manifest = json.loads((tmp / "parts" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["val"]["documents"] == 40


def test_loader_patches_rows_from_stored_entropies(entropy_dataset):
    tmp, docs, model = entropy_dataset
    by_text = {d: direct(model, d).astype(np.float16).astype(np.float32) for d in docs}
    threshold = float(np.median(np.concatenate(list(by_text.values()))))
    patcher = PatcherConfig(mode="entropy", threshold=threshold)
    cfg = DataConfig(seq_len=40, sources=[{"uri": str(tmp / "ent")}], streams=2, cache_dir=str(tmp / "c3"))
    batches = [next(it) for it in [iter(build_loader(cfg, patcher, 2, seed=3))] for _ in range(30)]
    streams = stream_sequences(batches, [0, 1], 2)
    patches = stream_sequences([{"tokens": b["patch_lengths"]} for b in batches], [0, 1], 2)
    checked = 0
    for s, rows in streams.items():
        ids = np.concatenate(rows)
        complete = split_documents(ids)
        ent = np.concatenate([by_text[d] for d in complete])  # the stream starts at a document start
        for j, row in enumerate(rows):
            if (j + 1) * 41 > len(ent):
                break
            want = patch_lengths(
                torch.from_numpy(row[None, :-1]),
                patcher,
                torch.from_numpy(ent[None, j * 41 : (j + 1) * 41 - 1]),
            )[0]
            got = torch.as_tensor(patches[s][j])
            assert torch.equal(got[: len(want)], want) and not got[len(want) :].any()
            checked += 1
    assert checked > 20
    assert (
        Counter(len(p[p > 0]) for rows in patches.values() for p in rows).most_common(1)[0][0] > 3
    )  # real patching


@pytest.mark.parametrize("rule", ["global", "monotonic"])
def test_calibrated_threshold_gives_the_target_on_held_out_documents(entropy_dataset, capsys, rule):
    tmp, _, _ = entropy_dataset
    target = 4.0
    assert (
        cli.main(
            [
                "calibrate",
                "cpu_tiny",
                "patcher.mode=entropy",
                f"patcher.entropy_rule={rule}",
                "--data",
                str(tmp / "ent"),
                "--target-patch-bytes",
                str(target),
                "--json",
            ]
        )
        == 0
    )
    row = json.loads(capsys.readouterr().out)
    train = json.loads((tmp / "ent" / "manifest.json").read_text())["splits"]["train"]["documents"]
    assert row["documents"] == train and abs(row["mean_patch_bytes"] / target - 1) < 0.05
    ids, ent, _ = entropy_sample(str(tmp / "ent"), "val", 1000)  # documents the calibration never read
    patcher = PatcherConfig(
        mode="entropy", entropy_rule=rule, **{row["field"].split(".")[1]: row["threshold"]}
    )
    assert abs(mean_patch_bytes(ids, patcher, ent) / target - 1) < 0.05


def test_calibration_needs_entropies_and_an_entropy_patcher(entropy_dataset, capsys):
    tmp, _, _ = entropy_dataset
    assert cli.main(["calibrate", "cpu_tiny", "--data", str(tmp / "ent"), "--target-patch-bytes", "4"]) == 2
    assert "patcher.mode=entropy" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "calibrate",
                "cpu_tiny",
                "patcher.mode=entropy",
                "--data",
                str(tmp / "text"),
                "--target-patch-bytes",
                "4",
            ]
        )
        == 2
    )
    assert "blt prep entropies" in capsys.readouterr().err


def test_a_sweep_variant_with_patch_bytes_is_calibrated_before_planning(entropy_dataset, tmp_path):
    from blt_scale.sweep.plan import SweepConfig, plan_sweep, plan_table

    tmp, _, _ = entropy_dataset
    sweep = SweepConfig.model_validate(
        {
            "run_dir": str(tmp_path),
            "budgets": [6e11],
            "patch_sample_batches": 4,
            "budget_tolerance": 0.05,
            "variants": [
                {
                    "name": "entropy",
                    "recipe": "cpu_tiny",
                    "patch_bytes": 4.0,
                    "overrides": [
                        "patcher.mode=entropy",
                        "data.streams=8",
                        f"data.cache_dir={tmp / 'c9'}",
                        f"data.sources=[{{uri: {tmp / 'ent'}}}]",
                    ],
                }
            ],
        }
    )
    (run,) = plan_sweep(sweep, tmp_path / "sweep.yaml")
    assert any(o.startswith("patcher.threshold=") for o in run.overrides)
    assert abs(run.mean_patch_bytes / 4.0 - 1) < 0.1 and "(4.00)" in plan_table([run])
