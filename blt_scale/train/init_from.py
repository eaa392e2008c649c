"""`model.init_from`: start a run from other runs' weights (the previous training phase, a text
model for the decoder). Runs on the unsharded model before the strategy shards it, and only on a
fresh start: a resumed run continues from its own checkpoint instead.
"""

from __future__ import annotations

from torch import nn

from blt_scale.config import ConfigError


def load_init(model: nn.Module, sources) -> list[str]:
    """Copy every tensor of each source (names prefixed) into the model; a name the model lacks or a
    shape that differs is an error. Returns the model's names that no source provided."""
    from blt_scale.checkpoint.restore import load_model

    own = model.state_dict()
    provided: set[str] = set()
    for src in sources:
        try:
            source, _, where = load_model(src.path)
        except FileNotFoundError as err:
            raise ConfigError(f"model.init_from {src.path}: {err}") from None
        state = {src.prefix + k: v for k, v in source.state_dict().items()}
        unknown = [k for k in state if k not in own]
        if unknown:
            raise ConfigError(
                f"model.init_from {where}: {unknown[0]!r} (and {len(unknown) - 1} more) not in this model; "
                "set init_from[].prefix or pick a matching model"
            )
        for k, v in state.items():
            if v.shape != own[k].shape:
                raise ConfigError(
                    f"model.init_from {where}: {k!r} has shape {list(v.shape)}, this model "
                    f"{list(own[k].shape)}"
                )
        model.load_state_dict(state, strict=False)
        provided |= set(state)
    for module in model.modules():  # state derived from the loaded weights (SVF's decomposition)
        if hasattr(module, "after_init_from"):
            module.after_init_from()
    return [k for k in own if k not in provided]
