"""A converted model goes where the original goes: ONNX (both exporters, run in ONNX Runtime),
AOTInductor (torch.export -> compiled package -> loaded from Python), torch.save/torch.load of
the whole model, copy.deepcopy. Each path is checked against the original model's output."""
import copy
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch

import mnv3_kernels
from mnv3_kernels import ops

from conftest import rel_err
from test_convert import make

pytestmark = [pytest.mark.usefixtures("one_thread")]
needs_cpu = pytest.mark.skipif("cpu" not in ops.backends(), reason="the compiled CPU library is not loaded")
SIZE = 64
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def original_and_converted(name):
    original = make(name)
    converted = mnv3_kernels.convert(copy.deepcopy(original))
    assert converted.mnv3_report.fused()
    return original, converted


def mnv3_nodes(graph):
    return [n for n in graph.nodes if n.op == "call_function" and str(n.target).startswith("mnv3")]


# ----------------------------------------------------------------------------------------------
# ONNX
# ----------------------------------------------------------------------------------------------
def run_onnx(path, x):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def onnx_ops(path):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(path)
    onnx.checker.check_model(model)
    return Counter((n.domain, n.op_type) for n in model.graph.node)


def expected_onnx_ops(converted):
    """How many of our operators the export meets: (convs of every kind, squeeze-excites)."""
    counts = converted.mnv3_report.counts()
    convs = sum(counts[kind]["fused"] for kind in ("conv", "dwconv", "pwconv"))
    return convs, counts["se"]["fused"]


@needs_cpu
@pytest.mark.parametrize("name,dynamo", [("tv_small", False), ("mobilenetv3_small_050", False),
                                         ("tv_small", True), ("tv_mobilenet_v2", False),
                                         ("efficientnet_lite0", True)])
def test_onnx_export_runs_in_onnxruntime(name, dynamo, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    if dynamo:
        pytest.importorskip("onnxscript")
    original, converted = original_and_converted(name)
    x = torch.rand(1, 3, SIZE, SIZE)
    path = str(tmp_path / "model.onnx")
    kwargs = {"custom_translation_table": mnv3_kernels.onnx_translation_table()} if dynamo else {}
    with torch.no_grad():
        want = original(x)
        program = torch.onnx.export(converted, (x,), path, dynamo=dynamo, **kwargs)
    if dynamo:  # the exported program called our operators, which became standard ONNX nodes
        assert len(mnv3_nodes(program.exported_program.graph)) == sum(expected_onnx_ops(converted))
    found = onnx_ops(path)
    assert {domain for domain, _ in found} == {""}, found  # standard ONNX operators only
    dw, se = expected_onnx_ops(converted)
    assert found[("", "GlobalAveragePool")] >= se and found[("", "HardSigmoid")] >= se
    assert found[("", "Conv")] >= dw
    relu6 = sum(e.shape.endswith("act=relu6") for e in converted.mnv3_report.fused())
    assert found[("", "Clip")] >= relu6  # relu6 -> Clip(0, 6)
    got = run_onnx(path, x)
    assert got.shape == want.shape
    assert rel_err(got, want) <= 1e-4


@needs_cpu
def test_onnx_translation_table_covers_the_operators():
    pytest.importorskip("onnxscript")
    table = mnv3_kernels.onnx_translation_table()
    namespaces = [torch.ops.mnv3] + ([torch.ops.mnv3_triton] if "triton" in ops.backends() else [])
    for ns in namespaces:
        for name in ("dwconv_bn_act", "squeeze_excite", "hardswish", "hardsigmoid"):
            assert getattr(ns, name).default in table
    for name in ("pointwise_conv_bn_act", "dense_conv_bn_act"):  # C++ (CPU) only
        assert getattr(torch.ops.mnv3, name).default in table
    assert len(table) == 4 * len(namespaces) + 2


@needs_cpu
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the argument checks, traced
@pytest.mark.parametrize("dynamo", [False, True])
def test_onnx_export_of_the_operators(dynamo, tmp_path):
    """Each operator alone, with an awkward geometry (k=5, stride 2, dilation 2, no bias)."""
    pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")

    class Ops(torch.nn.Module):
        def __init__(self):
            super().__init__()
            c, r = 24, 8
            self.w = torch.nn.Parameter(torch.randn(c, 1, 5, 5) * 0.3)
            self.b = torch.nn.Parameter(torch.randn(c))
            self.fc1_w, self.fc1_b = torch.nn.Parameter(torch.randn(r, c) * 0.3), torch.nn.Parameter(torch.randn(r))
            self.fc2_w, self.fc2_b = torch.nn.Parameter(torch.randn(c, r) * 0.3), torch.nn.Parameter(torch.randn(c))

        def forward(self, x):
            y = ops.dwconv_bn_act(x, self.w, None, stride=2, padding=(4, 3), dilation=2, activation="relu")
            z = ops.dwconv_bn_act(x, self.w, self.b, stride=1, padding=2, activation="hardswish")
            s = ops.squeeze_excite(z, self.fc1_w, self.fc1_b, self.fc2_w, self.fc2_b)
            r = ops.dwconv_bn_act(x * 8, self.w, self.b, stride=1, padding=2, activation="relu6")
            return y, ops.hardsigmoid(s) + ops.hardswish(s), r

    model = Ops().eval()
    x = torch.randn(2, 24, 19, 23)
    path = str(tmp_path / "ops.onnx")
    kwargs = {"custom_translation_table": mnv3_kernels.onnx_translation_table()} if dynamo else {}
    with torch.no_grad():
        y_ref = mnv3_kernels.reference.dwconv_bn_act(x, model.w, None, [2, 2], [4, 3], [2, 2], "relu")
        z_ref = mnv3_kernels.reference.dwconv_bn_act(x, model.w, model.b, [1, 1], [2, 2], [1, 1], "hardswish")
        s_ref = mnv3_kernels.reference.squeeze_excite(z_ref, model.fc1_w, model.fc1_b, model.fc2_w, model.fc2_b)
        r_ref = mnv3_kernels.reference.dwconv_bn_act(x * 8, model.w, model.b, [1, 1], [2, 2], [1, 1], "relu6")
        assert (r_ref == 6).any() and (r_ref == 0).any()
        torch.onnx.export(model, (x,), path, dynamo=dynamo, **kwargs)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    y, out, r = (torch.from_numpy(a) for a in session.run(None, {session.get_inputs()[0].name: x.numpy()}))
    assert rel_err(y, y_ref) <= 1e-5
    assert rel_err(r, r_ref) <= 1e-5
    assert onnx_ops(path)[("", "Clip")] == 1
    assert rel_err(out, torch.nn.functional.hardsigmoid(s_ref) + torch.nn.functional.hardswish(s_ref)) <= 1e-5
    assert {d for d, _ in onnx_ops(path)} == {""}


def test_onnx_translation_table_without_onnxscript_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    with pytest.raises(ImportError, match="pip install onnxscript"):
        mnv3_kernels.onnx_translation_table()


# ----------------------------------------------------------------------------------------------
# AOTInductor
# ----------------------------------------------------------------------------------------------
@needs_cpu
def test_aoti_package_from_python(tmp_path):
    """torch.export -> aoti_compile_and_package -> aoti_load_package, MobileNetV3-Small at 64 px
    (the compile takes a minute or two on 2 cores)."""
    original, converted = original_and_converted("tv_small")
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        want = original(x)
        program = torch.export.export(converted, (x,))
        assert len(mnv3_nodes(program.graph)) == sum(expected_onnx_ops(converted))
        path = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "model.pt2"))
    loaded = torch._inductor.aoti_load_package(path)
    with torch.no_grad():
        got = loaded(x)
    assert rel_err(got, want) <= 1e-4


@needs_cpu
def test_torch_export_of_converted_timm():
    """torch.export traces timm's blocks layer by layer (its own forward on the head/tail pairs):
    every fused layer of the report becomes one of our operators."""
    original, converted = original_and_converted("mobilenetv3_small_050")
    assert converted.mnv3_report.fused("block")
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        program = torch.export.export(converted, (x,))
        assert len(mnv3_nodes(program.graph)) == sum(expected_onnx_ops(converted))
        assert rel_err(program.module()(x), original(x)) <= 1e-4


# ----------------------------------------------------------------------------------------------
# torch.save / torch.load of the whole model, copy.deepcopy
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tv_small", "mobilenetv3_small_050"])
def test_torch_save_load_whole_model(name, tmp_path):
    original, converted = original_and_converted(name)
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        want = converted(x)  # fills the folded-weight caches
    path = tmp_path / "model.pt"
    torch.save(converted, path)
    loaded = torch.load(path, weights_only=False)
    assert type(loaded) is type(converted)
    assert [type(m) for m in loaded.modules()] == [type(m) for m in converted.modules()]
    assert str(loaded.mnv3_report) == str(converted.mnv3_report)
    with torch.no_grad():
        assert torch.equal(loaded(x), want)
    # A fresh process that has not imported mnv3_kernels loads and runs it too.
    torch.save(x, tmp_path / "x.pt")
    torch.save(want, tmp_path / "want.pt")
    script = (
        "import sys, torch\n"
        "torch.set_num_threads(1)  # as this test: the same reductions, bit for bit\n"
        f"model = torch.load({str(path)!r}, weights_only=False)\n"
        f"x, want = torch.load({str(tmp_path / 'x.pt')!r}), torch.load({str(tmp_path / 'want.pt')!r})\n"
        "with torch.no_grad():\n"
        "    sys.exit(0 if torch.equal(model(x), want) else 3)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("name", ["tv_small", "mobilenetv3_small_050"])
def test_deepcopy_is_independent(name):
    _, converted = original_and_converted(name)
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        want = converted(x)  # caches filled before the copy
        copied = copy.deepcopy(converted)
        assert torch.equal(copied(x), want)
        bns = [m for m in copied.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for bn in bns:  # the copy's BN statistics change in place ...
            bn.running_var.mul_(3.0)
            bn.running_mean.add_(0.5)
        changed = copied(x)
        assert rel_err(changed, want) > 1e-2  # ... the copy sees it ...
        assert torch.equal(converted(x), want)  # ... the original does not
        for p, q in zip(converted.parameters(), copied.parameters()):
            assert p is not q and p.data_ptr() != q.data_ptr()
