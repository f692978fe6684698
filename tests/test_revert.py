"""revert(): a converted model goes back to the original module types and structure, with the
same Parameter objects and an identical state_dict, for every model convert() handles."""
import pytest
import torch
import torch.nn as nn

import mnv3_kernels
from mnv3_kernels import modules as M

from test_convert import MODELS, make, outputs

pytestmark = [pytest.mark.usefixtures("one_thread")]
SIZE = 64
FUSED_TYPES = (M.FusedDepthwiseConvBNAct, M.DepthwiseConvBNActHead, M.PointwiseConvBNActHead, M.DenseConvBNActHead,
               M.BatchNormActTail, M.ActivationSlot, M.FusedSqueezeExcite, M.ActivationTail,
               M.FusedPointwiseConvBNAct, M.FusedConvBNAct, M.FusedInvertedResidual, M.FusedLinear)


def structure(model):
    return [(path, type(m)) for path, m in model.named_modules()]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_revert_restores_the_original(name):
    model = make(name)
    before = structure(model)
    params = [(n, p) for n, p in model.named_parameters()]
    state = model.state_dict()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        want = model(x)

    assert mnv3_kernels.convert(model) is model
    assert any(isinstance(m, FUSED_TYPES) for m in model.modules())
    assert mnv3_kernels.revert(model) is model

    assert structure(model) == before
    assert not any(isinstance(m, FUSED_TYPES) for m in model.modules())
    assert not hasattr(model, "mnv3_report")
    after = [(n, p) for n, p in model.named_parameters()]
    assert [n for n, _ in after] == [n for n, _ in params]
    assert all(p is q for (_, p), (_, q) in zip(after, params))
    new_state = model.state_dict()
    assert list(new_state) == list(state)
    for key, value in state.items():
        assert new_state[key].data_ptr() == value.data_ptr(), key
        assert torch.equal(new_state[key], value), key
    with torch.no_grad():
        got = model(x)
    for g, w in zip(outputs(got), outputs(want)):
        assert torch.equal(g, w)


def test_revert_hands_back_changes_made_while_converted():
    model = make("mobilenetv3_small_100")
    mnv3_kernels.convert(model)
    model.train()
    model.double()  # replaces the BN buffers (new tensors in the fused tails' dicts)
    sd = model.state_dict()
    mnv3_kernels.revert(model)
    assert all(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert value.dtype == (torch.int64 if key.endswith("num_batches_tracked") else torch.float64), key
        assert value.data_ptr() == sd[key].data_ptr(), key
    model.eval()
    x = torch.randn(1, 3, SIZE, SIZE, dtype=torch.float64)
    with torch.no_grad():
        model(x)  # the reverted plain model runs with the new buffers


def test_convert_revert_convert():
    model = make("tv_small")
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        want = model(x)
        mnv3_kernels.revert(mnv3_kernels.convert(model))
        mnv3_kernels.convert(model)
        counts = model.mnv3_report.counts()
        assert counts["dwconv"]["fused"] == 11 and counts["se"]["fused"] == 9
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_revert_leaves_hand_built_modules_and_plain_models():
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    fused = M.FusedDepthwiseConvBNAct(conv, nn.BatchNorm2d(8), nn.ReLU())
    model = nn.Sequential(fused, nn.Identity())
    assert mnv3_kernels.revert(model)[0] is fused
    with pytest.raises(TypeError, match="revert"):
        mnv3_kernels.revert("model")


def test_revert_a_copied_converted_model():
    import copy
    import pickle

    model = make("mobilenetv3_small_050")
    before = structure(model)
    mnv3_kernels.convert(model)
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        mnv3_kernels.revert(copied)
        assert structure(copied) == before
        # the copy's own tensors, not the converted model's
        params = dict(copied.named_parameters())
        assert all(p is not params[n] for n, p in model.named_parameters())
        x = torch.randn(1, 3, SIZE, SIZE)
        with torch.no_grad():
            torch.testing.assert_close(copied(x), model(x), rtol=1e-4, atol=1e-5)
