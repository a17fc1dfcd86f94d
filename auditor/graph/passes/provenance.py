"""Pass: write what the repair did into the model's metadata_props (deterministic, no timestamps)."""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from auditor.graph.passes import PassResult, ensure


def stamp(model: onnx.ModelProto, meta: Mapping[str, str]) -> PassResult:
    """A copy of `model` with `meta` in its metadata_props; a key already there (a second repair)
    is overwritten in place: onnx.checker rejects duplicate keys. Changes: key -> "metadata"."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    existing = {entry.key: entry for entry in out.metadata_props}
    for key, value in sorted(meta.items()):
        entry = existing[key] if key in existing else out.metadata_props.add()
        entry.key, entry.value = key, value
    return ensure(model, PassResult(out, {key: "metadata" for key in meta}), "stamp")
