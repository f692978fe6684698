"""torchvision detection models on a MobileNetV3 backbone, built as their pretrained weights build
them (FasterRCNN: FrozenBatchNorm2d backbone; SSDLite: BatchNorm eps=1e-3), convert and give the
original's boxes, scores and labels. No weights are downloaded: statistics are random."""
import re
from unittest import mock

import pytest
import torch
import torch.nn as nn

import mnv3_kernels
from mnv3_kernels import modules as M
from mnv3_kernels import ops

from conftest import rel_err

torchvision = pytest.importorskip("torchvision")
from torchvision.models.detection import faster_rcnn  # noqa: E402
from torchvision.ops.misc import Conv2dNormActivation, FrozenBatchNorm2d  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread")]


def random_frozen_bn_(model):
    # Mild statistics for every norm layer: the harsher ones of conftest (large means, dead
    # channels) saturate a detector's scores at 1.0, where detections no longer order.
    for m in model.modules():
        if isinstance(m, (FrozenBatchNorm2d, nn.modules.batchnorm._BatchNorm)):
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.5, 0.5)
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def trained_like_(model):
    """Weights whose outputs depend on the image, as a trained model's do. The builders' own
    initialization (e.g. SSDLite's N(0, 0.03), classifiers' N(0, 0.01)) gives near-constant
    logits: many detections then score within ~1e-7 of each other and trade places on rounding
    alone. Kaiming-scaled weights, random BN statistics and sharper classifiers spread them."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            m.weight.mul_(0.8)
    random_frozen_bn_(model)
    heads = [m for name, m in model.named_modules()
             if name.endswith(("cls_logits", "cls_score"))  # FasterRCNN: RPN objectness, box classes
             or re.fullmatch(r"head\.classification_head\.module_list\.\d+\.1", name)]  # SSDLite
    assert heads and all(isinstance(m, nn.Conv2d | nn.Linear) for m in heads)
    for m in heads:
        m.weight.mul_(3.0)
    return model


def frozen_backbone(builder, **kwargs):
    """The builder as with weights_backbone given: its MobileNetV3 gets norm_layer=FrozenBatchNorm2d."""
    plain = faster_rcnn.mobilenet_v3_large

    def backbone(**kw):
        return plain(**{**kw, "norm_layer": FrozenBatchNorm2d})

    with mock.patch.object(faster_rcnn, "mobilenet_v3_large", backbone):
        return builder(weights=None, weights_backbone=None, **kwargs)


# KEEP + 1 detections (the last one shows the cut is well separated); a zero score threshold.
# The full-size FasterRCNN resizes to 800 px by default; 320 px keeps the test short.
KEEP = 10
MODELS = {
    "ssdlite320_mobilenet_v3_large": lambda: torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=5, detections_per_img=KEEP + 1),
    "fasterrcnn_mobilenet_v3_large_fpn": lambda: frozen_backbone(
        torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn, num_classes=5, box_score_thresh=0.0,
        box_detections_per_img=KEEP + 1, min_size=320, max_size=320),
    "fasterrcnn_mobilenet_v3_large_320_fpn": lambda: frozen_backbone(
        torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn, num_classes=5, box_score_thresh=0.0,
        box_detections_per_img=KEEP + 1),
}


def assert_same_detections(got, want):
    """Same detections: scores (sorted, highest first) alike in order; boxes and labels alike as
    sets -- two detections whose scores differ by ~1e-7 may trade places."""
    assert len(want["scores"]) == KEEP + 1
    assert len(got["scores"]) == KEEP + 1 and len(got["boxes"]) == KEEP + 1
    # Rounding moves scores by ~1e-7: the comparison is well posed when no two are that close.
    assert (want["scores"][:-1] - want["scores"][1:]).min() > 1e-6
    torch.testing.assert_close(got["scores"], want["scores"], rtol=1e-4, atol=1e-6)
    got, want = ({k: v[:KEEP] for k, v in d.items()} for d in (got, want))
    n = KEEP
    dist = (got["boxes"][:, None, :] - want["boxes"][None, :, :]).abs().amax(-1)
    dist[got["labels"][:, None] != want["labels"][None, :]] = float("inf")
    nearest = dist.argmin(0)  # the got detection closest to each wanted one
    assert sorted(nearest.tolist()) == list(range(n)), "not a one-to-one match"
    assert dist[nearest, torch.arange(n)].max() <= 1e-3
    # the scores of matched detections agree too
    torch.testing.assert_close(got["scores"][nearest], want["scores"], rtol=1e-4, atol=1e-6)


def expected_fused(model):
    """(depthwise blocks that can fuse, squeeze-excites), read from the original structure."""
    dw = se = 0
    for m in model.modules():
        if isinstance(m, Conv2dNormActivation) and m[0].groups > 1 and len(m) == 3:
            dw += type(m[2]) in (nn.ReLU, nn.Hardswish, nn.ReLU6)
        se += isinstance(m, torchvision.ops.misc.SqueezeExcitation)
    return dw, se


@pytest.mark.parametrize("backend", [b for b in ("cpu", "reference") if b in ops.backends()][:1])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_detection_model_matches_original(name, backend):
    torch.manual_seed(0)
    model = MODELS[name]()
    with torch.no_grad():
        trained_like_(model)
    model.eval()
    frozen = sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert frozen > 0 if "fasterrcnn" in name else frozen == 0
    state = model.state_dict()
    image = torch.rand(3, 200, 240)
    with torch.no_grad():
        want = model([image])[0]
        features_want = model.backbone(image[None])
    assert len(want["boxes"]) > 0

    dw, se = expected_fused(model)
    mnv3_kernels.convert(model, backend=backend)
    counts = model.mnv3_report.counts()
    # The backbone's 15; SSDLite's extra layers and head add 16 more, with ReLU6.
    assert counts["dwconv"]["fused"] == dw == (31 if "ssdlite" in name else 15)
    assert counts["se"]["fused"] == se == 8
    assert model.mnv3_report.skipped("dwconv") == []
    if "fasterrcnn" in name:
        assert sum(isinstance(m, M.FusedDepthwiseConvBNAct) and isinstance(m[1], FrozenBatchNorm2d)
                   for m in model.modules()) == 15

    new_state = model.state_dict()
    assert list(new_state) == list(state)
    assert all(torch.equal(new_state[k], v) for k, v in state.items())

    with torch.no_grad():
        got = model([image])[0]
        features_got = model.backbone(image[None])
    for key in features_want:
        assert rel_err(features_got[key], features_want[key]) <= 1e-4, key
    assert_same_detections(got, want)


def test_frozen_batch_norm_folds_in_train_mode_too():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
    seq = nn.Sequential(nn.Sequential(conv, random_frozen_bn_(FrozenBatchNorm2d(16)), nn.Hardswish()))
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        want = seq(x)
    mnv3_kernels.convert(seq.train())
    assert isinstance(seq[0], M.FusedDepthwiseConvBNAct)
    with torch.no_grad():
        assert rel_err(seq(x), want) <= 1e-5
    # gradients reach the conv through the fused op, as through the frozen original
    seq(x).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_frozen_batch_norm_wrong_size_is_skipped():
    conv = nn.Conv2d(16, 16, 3, padding=1, groups=16)
    seq = nn.Sequential(nn.Sequential(conv, FrozenBatchNorm2d(8), nn.ReLU()))
    mnv3_kernels.convert(seq)
    (entry,) = seq.mnv3_report.skipped("dwconv")
    assert "16 features" in entry.reason
