"""MVoT on the BLT: one byte stream that interleaves text bytes with visual codes.

The vocabulary is the 259 byte ids followed by the K codes of a VQ image tokenizer (vq_image.py):
code c is id IMAGE_OFFSET + c (mvot.py). The model is the BLT (blt.py) with that vocabulary in its
embedding and output; the hash n-gram embedding hashes image ids like any other id (the hash is a
polynomial over ids, so nothing assumes ids < 259). Patching must not need an entropy model:
entropy models see bytes only (recipe.py refuses patcher.mode=entropy for this kind).

The model holds the image tokenizer as a frozen submodule `images`: its codebook vectors are the
embeddings the token discrepancy loss compares (train/objectives.py), and its decoder turns
generated codes back into pixels (`blt generate` writes them as PNG files). Its weights come from
a trained tokenizer through `model.init_from: [{path: TOKENIZER_RUN_OR_EXPORT, prefix: images.}]`
(train/init_from.py), and then travel in this model's checkpoints and exports.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from blt_scale.model.blt import BLT, BLTConfig
from blt_scale.model.brain_common import InitSource
from blt_scale.model.mvot import IMAGE_OFFSET, MVoTConfig
from blt_scale.model.vq_image import VQImageConfig, VQImageTokenizer


class MVoTBLTConfig(BLTConfig):
    kind: Literal["mvot"] = "mvot"  # type: ignore[assignment]
    mvot: MVoTConfig = MVoTConfig()
    tokenizer: VQImageConfig = Field(
        default=VQImageConfig(), description="the image tokenizer's shape (its weights: init_from)"
    )
    init_from: list[InitSource] = Field(
        default=[],
        description="weights loaded before training: the trained tokenizer with prefix 'images.'",
    )

    @property
    def vocab_size(self) -> int:
        return IMAGE_OFFSET + self.tokenizer.rvq.codebook_size


class MVoTBLT(BLT):
    def __init__(self, cfg: MVoTBLTConfig):
        super().__init__(cfg, cfg.vocab_size)
        self.images = VQImageTokenizer(cfg.tokenizer).requires_grad_(False)
        self.images.vq.learn = False  # codebooks are the trained tokenizer's, never updated here
