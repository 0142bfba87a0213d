"""Where a step's time goes: oneDNN verbose logs and TensorFlow profiler traces, summarised.

Not a test module and not part of ``unet3d``: the benchmark scripts import it as
``benchmarks._profile``.

- ``onednn_summary``: the ``ONEDNN_VERBOSE=1`` lines of the primitives oneDNN executed
  (``onednn_verbose,[v1,]primitive,exec,cpu,<kind>,<implementation>,<propagation>,
  <memory descriptors>,<attributes>,<algorithm>,<shapes>,<ms>``, oneDNN 3.x's format) grouped
  into convolution kernels per data type, reorders (weights into oneDNN's blocked layout,
  fp32<->bf16 conversions, activation layout changes) and time per primitive kind.
- ``profile_call``: one call under ``tf.profiler``; the trace's TensorFlow op events (named
  ``<scope>/<op name>:<op type>`` on the ``tf_Compute`` threads) summed per op type, per
  model layer and per layer kind (conv, norm, act, transpose, concat, head, softmax; loss and
  optimizer ops outside the model). Shares are of the summed op time, which counts ops that
  run in parallel (inter-op threads) once each.
"""

from __future__ import annotations

import glob
import re
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

#: The model's layer names end in these (unet3d/model/unet3d.py, heads.py); the kind of a layer.
LAYER_KINDS = (("_conv", "conv"), ("_norm", "norm"), ("_act", "act"),
               ("_transpose", "transpose"), ("_concat", "concat"))
_OLD_MEMORY = re.compile(r"^(src|dst|wei|bia|diff_src|diff_dst|diff_wei|diff_bia)_([a-z0-9]+):")


def _memory(descriptor: str) -> dict[str, str]:
    """``src_bf16::blocked:acdeb::f0`` (or 3.5+'s ``src:bf16::blocked:acdeb::f0``) -> parts."""
    match = _OLD_MEMORY.match(descriptor)
    if match:  # <arg>_<dtype>:<properties>:<format kind>:<tag>:<flags>
        parts = descriptor.split(":")
        return {"arg": match.group(1), "dtype": match.group(2),
                "tag": parts[3] if len(parts) > 3 else ""}
    parts = descriptor.split(":")  # <arg>:<dtype>:<properties>:<format kind>:<tag>:<flags>
    return {"arg": parts[0], "dtype": parts[1] if len(parts) > 1 else "",
            "tag": parts[4] if len(parts) > 4 else ""}


def parse_onednn_line(line: str) -> dict[str, Any] | None:
    """One executed primitive of a verbose line (kind, impl, prop, memories, shape, ms).

    None for every other line (``create``, ``info``, TensorFlow's own output).
    """
    if not line.startswith("onednn_verbose,"):
        return None
    fields = line.strip().split(",")
    if len(fields) > 1 and re.fullmatch(r"v\d+", fields[1]):  # 3.3+: a format version field
        fields = fields[:1] + fields[2:]
    if len(fields) < 12 or fields[1] != "primitive" or fields[2] != "exec":
        return None
    try:
        milliseconds = float(fields[11])
    except ValueError:
        return None
    memories = [_memory(item) for item in fields[7].split(" ") if item]
    return {"kind": fields[4], "impl": fields[5], "prop": fields[6], "memories": memories,
            "shape": fields[10], "ms": milliseconds}


def _reorder_class(memories: Sequence[dict[str, str]]) -> str:
    """``f32->bf16`` style for dtype conversions, ``weights`` for filters (and their gradients)
    between TensorFlow's DHWIO layout (tag ``cdeba``) and oneDNN's blocked one, else
    ``layout``."""
    source = next((m for m in memories if m["arg"] == "src"), None)
    target = next((m for m in memories if m["arg"] == "dst"), None)
    if source is None or target is None:
        return "unknown"
    if source["dtype"] != target["dtype"]:
        return f"{source['dtype']}->{target['dtype']}"
    tags = (source["tag"], target["tag"])
    if any(tag in ("cdeba", "cdba") or sum(ch.isupper() for ch in tag) >= 2 for tag in tags):
        return "weights"
    return "layout"


def _rounded(table: dict[Any, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {str(key): {"count": int(value["count"]), "ms": round(value["ms"], 3)}
            for key, value in sorted(table.items(), key=lambda item: -item[1]["ms"])}


def onednn_summary(lines: Iterable[str]) -> dict[str, Any]:
    """Summarise executed oneDNN primitives.

    Returns:
        ``total_ms``; ``by_kind`` (count, ms, share per primitive kind); ``convolutions``
        (count and ms per ``<impl> <prop> <src dtype>``); ``reorders`` (per class:
        ``weights``, ``layout`` or ``<dtype>-><dtype>``); ``conv_impls_by_dtype`` (the
        convolution kernels that ran, per source dtype); ``amx`` (an AMX kernel ran);
        ``dtype_reorders`` (count of fp32<->bf16 reorders: between layers there should be
        none); ``layout_reorders``.
    """
    by_kind: dict[str, dict[str, float]] = defaultdict(lambda: {"count": 0, "ms": 0.0})
    convolutions: dict[str, dict[str, float]] = defaultdict(lambda: {"count": 0, "ms": 0.0})
    reorders: dict[str, dict[str, float]] = defaultdict(lambda: {"count": 0, "ms": 0.0})
    impls: dict[str, set[str]] = defaultdict(set)
    total = 0.0
    for line in lines:
        primitive = parse_onednn_line(line)
        if primitive is None:
            continue
        total += primitive["ms"]
        kind = primitive["kind"]
        by_kind[kind]["count"] += 1
        by_kind[kind]["ms"] += primitive["ms"]
        if kind == "convolution" or kind == "deconvolution":
            source = next((m["dtype"] for m in primitive["memories"]
                           if m["arg"] in ("src", "diff_src")), "?")
            key = f"{primitive['impl']} {primitive['prop']} {source}"
            convolutions[key]["count"] += 1
            convolutions[key]["ms"] += primitive["ms"]
            impls[source].add(primitive["impl"])
        elif kind == "reorder":
            group = _reorder_class(primitive["memories"])
            reorders[group]["count"] += 1
            reorders[group]["ms"] += primitive["ms"]
    kinds = {kind: {"count": int(value["count"]), "ms": round(value["ms"], 3),
                    "share": round(value["ms"] / total, 4) if total else 0.0}
             for kind, value in sorted(by_kind.items(), key=lambda item: -item[1]["ms"])}
    return {
        "total_ms": round(total, 3),
        "by_kind": kinds,
        "convolutions": _rounded(convolutions),
        "reorders": _rounded(reorders),
        "conv_impls_by_dtype": {dtype: sorted(found) for dtype, found in sorted(impls.items())},
        "amx": any("amx" in impl for found in impls.values() for impl in found),
        "dtype_reorders": int(sum(value["count"] for key, value in reorders.items()
                                  if "->" in key)),
        "layout_reorders": int(reorders["layout"]["count"]) if "layout" in reorders else 0,
    }


def layer_of(op_name: str, layer_names: Iterable[str]) -> str | None:
    """The model layer an op belongs to, from its scope (``unet3d_1/up1_2_norm_1/Mean``)."""
    names = set(layer_names)
    for part in op_name.split("/"):
        if part in names:
            return part
        stripped = re.sub(r"_\d+$", "", part)
        if stripped in names:
            return stripped
    return None


def layer_kind(layer: str | None, op_name: str) -> str:
    """conv, norm, act, transpose, concat, head, softmax; outside the model: optimizer, loss."""
    if layer is not None:
        if layer == "probabilities":
            return "softmax"
        if layer.startswith("head"):
            return "head"
        for suffix, kind in LAYER_KINDS:
            if layer.endswith(suffix):
                return kind
        return "other layer"
    lowered = op_name.lower()
    if lowered.startswith(("adam", "sgd", "optimizer")) or "/adam" in lowered:
        return "optimizer"
    if "loss" in lowered or "dice" in lowered or "cross" in lowered:
        return "loss"
    return "outside the model (loss, ...)"


def op_shares(events: Iterable[tuple[str, str, float]],
              layer_names: Iterable[str]) -> dict[str, Any]:
    """Sum op events ``(op name, op type, ms)`` per op type, layer and layer kind.

    Returns:
        ``total_ms``, ``by_op_type``, ``by_layer_kind`` and ``by_layer`` (each entry:
        ``ms``, ``share``, ``count``; sorted by time).
    """
    names = list(layer_names)
    tables: dict[str, dict[str, dict[str, float]]] = {
        "by_op_type": defaultdict(lambda: {"count": 0, "ms": 0.0}),
        "by_layer_kind": defaultdict(lambda: {"count": 0, "ms": 0.0}),
        "by_layer": defaultdict(lambda: {"count": 0, "ms": 0.0}),
    }
    total = 0.0
    for name, op_type, milliseconds in events:
        layer = layer_of(name, names)
        total += milliseconds
        for table, key in (("by_op_type", op_type), ("by_layer_kind", layer_kind(layer, name)),
                           ("by_layer", layer or "(outside the model)")):
            tables[table][key]["count"] += 1
            tables[table][key]["ms"] += milliseconds
    result: dict[str, Any] = {"total_ms": round(total, 3)}
    for table, values in tables.items():
        result[table] = {key: {"ms": round(value["ms"], 3),
                               "share": round(value["ms"] / total, 4) if total else 0.0,
                               "count": int(value["count"])}
                         for key, value in sorted(values.items(), key=lambda item: -item[1]["ms"])}
    return result


def xspace_op_events(logdir: str | Path) -> list[tuple[str, str, float]]:
    """``(op name, op type, ms)`` of every TensorFlow op in the newest trace under ``logdir``."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = sorted(glob.glob(str(Path(logdir) / "**" / "*.xplane.pb"), recursive=True))
    if not paths:
        raise FileNotFoundError(f"{logdir}: no *.xplane.pb trace")
    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(paths[-1]).read_bytes())
    events = []
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or "::" in name:  # executor bookkeeping, not an op
                    continue
                op_name, op_type = name.rsplit(":", 1)
                events.append((op_name, op_type, event.duration_ps / 1e9))
    return events


def profile_call(call: Callable[[], Any], layer_names: Iterable[str],
                 top: int = 12) -> dict[str, Any]:
    """Run ``call()`` once under ``tf.profiler`` and return ``op_shares`` of its trace.

    ``by_layer`` keeps the ``top`` most expensive layers (plus the rest as one entry).
    ``call`` must wait for its result (e.g. ``.numpy()``) so that the trace holds it all.
    """
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="unet3d-profile-") as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            call()
        finally:
            tf.profiler.experimental.stop()
        shares = op_shares(xspace_op_events(logdir), layer_names)
    layers = list(shares["by_layer"].items())
    if len(layers) > top:
        rest = layers[top:]
        kept = dict(layers[:top])
        kept["(other layers)"] = {
            "ms": round(sum(value["ms"] for _, value in rest), 3),
            "share": round(sum(value["share"] for _, value in rest), 4),
            "count": sum(value["count"] for _, value in rest)}
        shares["by_layer"] = kept
    shares["method"] = ("tf.profiler trace of one call: TensorFlow op events on the tf_Compute "
                        "threads summed per op type / layer (op time, not wall time)")
    return shares


def shares_line(profile: dict[str, Any], top: int = 6) -> str:
    """``conv 71%, norm 14%, ... | ops: _MklNativeConv3D 66%, Cast 5%, ...`` for a console."""
    kinds = ", ".join(f"{key} {100 * value['share']:.0f}%"
                      for key, value in list(profile["by_layer_kind"].items())[:top])
    ops = ", ".join(f"{key} {100 * value['share']:.0f}%"
                    for key, value in list(profile["by_op_type"].items())[:top])
    return f"{kinds} | ops: {ops} (of {profile['total_ms']:.0f} ms op time)"
