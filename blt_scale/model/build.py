"""One entry point from a model config to a model, and the one place that knows what each model
kind is: whether it reads patches, whether it generates text from bytes alone, whether it needs a
brain signal. Commands, the sweep planner and evaluation ask `KINDS` instead of comparing strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Union

from pydantic import Field
from torch import nn

from blt_scale.model.blt import BLT, BLTConfig
from blt_scale.model.brain_blt import BrainBLT, BrainBLTConfig
from blt_scale.model.byte_lm import ByteLM, ByteLMConfig
from blt_scale.model.meg_to_text import MegToText, MegToTextConfig
from blt_scale.model.mvot_blt import MVoTBLT, MVoTBLTConfig
from blt_scale.model.svf import SVFConfig, SVFModel
from blt_scale.model.vq_image import VQImageConfig, VQImageTokenizer

ModelConfig = Annotated[
    Union[BLTConfig, ByteLMConfig, BrainBLTConfig, MegToTextConfig, SVFConfig, MVoTBLTConfig, VQImageConfig],  # noqa: UP007
    Field(discriminator="kind"),
]
SVFConfig.model_rebuild(_types_namespace={"ModelConfig": ModelConfig})  # its `base` is any ModelConfig


@dataclass(frozen=True)
class Kind:
    cls: type[nn.Module]
    patched: bool  # groups bytes into patches with the recipe's patcher (the BLT family)
    text: bool  # reads and writes bytes only: `blt generate`, `blt eval`, entropy models
    brain: bool  # needs a brain signal beside the bytes: `blt eval-brain`
    images: bool = False  # image tokens in its byte stream: `blt generate` writes them as PNG files


KINDS: dict[str, Kind] = {
    "blt": Kind(BLT, patched=True, text=True, brain=False),
    "byte_lm": Kind(ByteLM, patched=False, text=True, brain=False),
    "brain_blt": Kind(BrainBLT, patched=True, text=False, brain=True),
    "meg_to_text": Kind(MegToText, patched=False, text=False, brain=True),
    # SVF experts (model/svf.py) adapt a text model; batches are patched as the base's recipe says
    "svf": Kind(SVFModel, patched=True, text=True, brain=False),
    # MVoT (model/mvot_blt.py): a BLT over bytes and visual codes; its VQ image tokenizer reads pixels
    "mvot": Kind(MVoTBLT, patched=True, text=True, brain=False, images=True),
    "vq_image": Kind(VQImageTokenizer, patched=False, text=False, brain=False),
}


def kinds_where(**flags: bool) -> list[str]:
    """Kind names whose flags match, e.g. kinds_where(text=True) -> ["blt", "byte_lm"]."""
    return [name for name, kind in KINDS.items() if all(getattr(kind, k) == v for k, v in flags.items())]


def build_model(cfg) -> nn.Module:
    return KINDS[cfg.kind].cls(cfg)
