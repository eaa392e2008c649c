"""Loading DCP checkpoints without running code from their files.

DCP's `.metadata` is a pickle, and its non-tensor items (optimizer hyper-parameters) are read
with `torch.load(weights_only=False)`: a crafted checkpoint would run code on `blt eval`, `export`
or a resume. Here the metadata goes through an unpickler that resolves only an allow-list of DCP's
own metadata classes and the few torch/pathlib types they hold, and non-tensor items through
`torch.load(weights_only=True)`. Every failure, including DCP's `CheckpointException` (a
BaseException), becomes one `CheckpointLoadError` line naming the checkpoint.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

METADATA = ".metadata"
_DCP_METADATA = "torch.distributed.checkpoint.metadata"
ALLOWED: set[tuple[str, str]] = {
    *(
        (_DCP_METADATA, name)
        for name in (
            "Metadata",
            "MetadataIndex",
            "ChunkStorageMetadata",
            "TensorStorageMetadata",
            "BytesStorageMetadata",
            "TensorProperties",
            "StorageMeta",
            "_MEM_FORMAT_ENCODING",
        )
    ),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a name -> torch.layout lookup
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"),
    *(("builtins", name) for name in ("set", "frozenset", "slice", "complex")),
}


class CheckpointLoadError(RuntimeError):
    """A checkpoint that cannot be loaded (unsafe, damaged or incompatible), in one line."""


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):  # torch.float32 ...
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"refers to {module}.{name}, which is not DCP checkpoint metadata")


def read_metadata(path: str | Path) -> Metadata:
    """The DCP metadata of checkpoint directory `path`, unpickled through the allow-list."""
    file = Path(path) / METADATA
    try:
        with open(file, "rb") as f:
            metadata = RestrictedUnpickler(f).load()
    except FileNotFoundError:
        raise CheckpointLoadError(f"{file}: missing (not a DCP checkpoint, or a damaged one)") from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure of untrusted bytes is one line
        raise CheckpointLoadError(f"{file}: refused to load: {one_line(err)}") from None
    if not isinstance(metadata, Metadata):
        raise CheckpointLoadError(f"{file}: holds a {type(metadata).__name__}, not DCP metadata")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """torch's FileSystemReader with the metadata read through the allow-list."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        path = self._get_metadata_path(rank)
        with self.fs.create_stream(path, "rb") as f:
            try:
                metadata = RestrictedUnpickler(f).load()
            except Exception as err:  # noqa: BLE001
                raise CheckpointLoadError(f"{path}: refused to load: {one_line(err)}") from None
        if not isinstance(metadata, Metadata):
            raise CheckpointLoadError(f"{path}: holds a {type(metadata).__name__}, not DCP metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner whose non-tensor items load with weights_only=True."""

    def load_bytes(self, read_item, value) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def safe_load(state: dict, path: str | Path, process_group=None) -> None:
    """dcp.load of `state` from checkpoint directory `path`, safely; any failure is one
    CheckpointLoadError line."""
    path = Path(path)
    read_metadata(path)  # a clear error before DCP wraps it
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="torch.distributed is disabled"
            )  # one process: expected
            dcp.load(
                state,
                checkpoint_id=str(path),
                storage_reader=SafeFileSystemReader(str(path)),
                planner=SafeLoadPlanner(),
                process_group=process_group,
            )
    except CheckpointLoadError:
        raise
    except CheckpointException as err:
        raise CheckpointLoadError(f"{path}: cannot load the checkpoint: {_failure(err)}") from None
    except Exception as err:  # noqa: BLE001 - torch's errors are many; the user gets one line
        raise CheckpointLoadError(f"{path}: cannot load the checkpoint: {one_line(err)}") from None


def _failure(err: CheckpointException) -> str:
    for rank, (exc, _) in sorted(err.failures.items()):
        return f"rank {rank}: {one_line(exc)}"
    return "unknown failure"


def describe(err: BaseException) -> str:
    """One line for any exception, DCP's CheckpointException (a page of tracebacks) included."""
    return f"CheckpointException: {_failure(err)}" if isinstance(err, CheckpointException) else one_line(err)


def one_line(err: BaseException) -> str:
    """An exception as one short line; torch.load's weights_only refusal as its essential part."""
    text = str(err)
    if "WeightsUnpickler error: " in text:  # torch's message is a page of advice around this
        text = text.split("WeightsUnpickler error: ", 1)[1].split(". Please use", 1)[0]
    text = " ".join(text.split())
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
