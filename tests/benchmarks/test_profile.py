"""benchmarks._profile: oneDNN verbose lines and profiler op events, summarised."""

from __future__ import annotations

import pytest

from benchmarks._profile import layer_of, onednn_summary, op_shares, parse_onednn_line

# Lines as TensorFlow 2.18's oneDNN prints them (no format version), plus the 3.5+ format.
LINES = [
    "onednn_verbose,primitive,create:cache_miss,cpu,convolution,brg_conv_fwd:avx512_core_bf16,"
    "forward_training,src_bf16::blocked:acdeb::f0,,,mb1_ic4oc32,0.5",
    "onednn_verbose,primitive,exec,cpu,reorder,jit:uni,undef,src_bf16::blocked:cdeba::f0 "
    "dst_bf16::blocked:AcdeB32a2b::f0,,,32x4x3x3x3,0.04",
    "onednn_verbose,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_bf16,"
    "forward_training,src_bf16::blocked:acdeb::f0 wei_bf16:a:blocked:AcdeB32a2b::f0 "
    "bia_undef::undef::: dst_bf16::blocked:acdeb::f0,attr-scratchpad:user,"
    "alg:convolution_direct,mb1_ic4oc32_id32od32kd3sd1dd0pd1,0.84",
    "onednn_verbose,primitive,exec,cpu,reorder,jit:uni,undef,src_bf16::blocked:ABcde16b16a::f0 "
    "dst_bf16::blocked:cdeba::f0,,,32x32x3x3x3,0.06",
    "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:acdeb::f0 "
    "dst:bf16::blocked:acdeb::f0,,,1x32x32x32x32,0.5",
    "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:bf16::blocked:acdeb::f0 "
    "dst:bf16::blocked:aBcde16b::f0,,,1x32x32x32x32,0.25",
    "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_amx,"
    "forward_inference,src:bf16::blocked:acdeb::f0 wei:bf16:a:blocked:AcdeB32a2b::f0 "
    "dst:bf16::blocked:acdeb::f0,,alg:convolution_direct,mb1_ic32oc32,2.0",
    "onednn_verbose,primitive,exec,cpu,softmax,jit:avx512_core,forward_inference,"
    "src_f32::blocked:abcde::f0 dst_f32::blocked:abcde::f0,,alg:softmax_accurate axis:4,"
    "1x32x32x32x4,1.0",
    "2026-12-02 13:31:24.885307: I tensorflow/core/util/port.cc:153] oneDNN custom operations",
]


def test_verbose_lines_of_both_formats_are_parsed():
    assert parse_onednn_line(LINES[0]) is None  # create, not exec
    assert parse_onednn_line(LINES[-1]) is None
    conv = parse_onednn_line(LINES[2])
    assert (conv["kind"], conv["impl"], conv["prop"], conv["ms"]) == (
        "convolution", "brg_conv_fwd:avx512_core_bf16", "forward_training", 0.84)
    assert [m["dtype"] for m in conv["memories"]] == ["bf16", "bf16", "undef", "bf16"]
    newer = parse_onednn_line(LINES[6])
    assert newer["impl"].endswith("amx") and newer["memories"][0] == {
        "arg": "src", "dtype": "bf16", "tag": "acdeb"}


def test_summary_separates_weight_dtype_and_layout_reorders():
    summary = onednn_summary(LINES)
    assert summary["reorders"]["weights"] == {"count": 2, "ms": 0.1}
    assert summary["reorders"]["f32->bf16"] == {"count": 1, "ms": 0.5}
    assert summary["reorders"]["layout"] == {"count": 1, "ms": 0.25}
    assert summary["dtype_reorders"] == 1 and summary["layout_reorders"] == 1
    assert summary["conv_impls_by_dtype"] == {
        "bf16": ["brg_conv_fwd:avx512_core_amx", "brg_conv_fwd:avx512_core_bf16"]}
    assert summary["amx"] is True
    assert summary["total_ms"] == pytest.approx(0.04 + 0.84 + 0.06 + 0.5 + 0.25 + 2.0 + 1.0)
    assert list(summary["by_kind"]) == ["convolution", "softmax", "reorder"]
    assert summary["by_kind"]["convolution"]["share"] == pytest.approx(2.84 / 4.69, abs=1e-4)


def test_no_amx_and_no_reorders_when_none_ran():
    summary = onednn_summary(LINES[2:3])
    assert not summary["amx"] and summary["dtype_reorders"] == 0 and summary["reorders"] == {}


def test_op_events_are_grouped_by_type_layer_and_kind():
    layers = ["input_block_1_conv", "input_block_1_norm", "up0_transpose", "probabilities"]
    events = [
        ("unet3d_1/input_block_1_conv_1/convolution", "_MklNativeConv3D", 6.0),
        ("gradient_tape/unet3d_1/input_block_1_norm_1/Mean", "Mean", 1.0),
        ("unet3d_1/input_block_1_norm_1/Cast", "Cast", 1.0),
        ("unet3d_1/up0_transpose_1/conv3d_transpose", "_MklNativeConv3DBackpropInputV2", 1.0),
        ("unet3d_1/probabilities_1/Softmax", "_MklSoftmax", 0.5),
        ("Adam/AssignAddVariableOp", "AssignAddVariableOp", 0.5),
    ]
    shares = op_shares(events, layers)
    assert shares["total_ms"] == 10.0
    assert shares["by_layer_kind"]["conv"] == {"ms": 6.0, "share": 0.6, "count": 1}
    assert shares["by_layer_kind"]["norm"]["ms"] == 2.0
    assert shares["by_layer_kind"]["softmax"]["ms"] == 0.5
    assert shares["by_layer_kind"]["optimizer"]["ms"] == 0.5
    assert shares["by_op_type"]["Cast"]["share"] == 0.1
    assert shares["by_layer"]["input_block_1_norm"]["count"] == 2
    assert layer_of("unet3d_1/up0_transpose_1/x", layers) == "up0_transpose"
    assert layer_of("loss/Sum", layers) is None
