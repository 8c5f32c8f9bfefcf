import pytest
import torch

from cellstack.config import load_config
from cellstack.errors import CellstackError
from cellstack.inference.tta import FLIPS, Flip, parse_flips
from cellstack.modeling.anchors import ProposalParams, RPNOutputs, select_proposals
from cellstack.modeling.build import build_model
from tests.modeling.conftest import TINY, random_rpn_outputs, two_cells

SIZE = (64, 96)


@pytest.mark.parametrize("name", list(FLIPS))
def test_flips_round_trip_exactly(name):
    flip = FLIPS[name]
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 3, *SIZE, generator=g)
    boxes = torch.rand(5, 4, generator=g) * 40
    boxes[:, 2:] += boxes[:, :2]
    masks = torch.rand(5, 28, 28, generator=g)
    assert torch.equal(flip.maps(flip.maps(maps)), maps)
    assert torch.equal(flip.maps(flip.maps(masks)), masks)
    assert torch.allclose(flip.boxes(flip.boxes(boxes, SIZE), SIZE), boxes)
    rpn = RPNOutputs(
        [torch.rand(1, 3, 8, 12, generator=g)], [torch.rand(1, 12, 8, 12, generator=g)]
    )
    back = flip.rpn(flip.rpn(rpn))
    assert torch.equal(back.objectness[0], rpn.objectness[0])
    assert torch.equal(back.deltas[0], rpn.deltas[0])
    if not flip.identity:
        assert not torch.equal(flip.maps(maps), maps)
    flipped = flip.boxes(boxes, SIZE)
    assert (flipped[:, 2:] >= flipped[:, :2]).all()  # still xyxy


def test_a_flipped_box_covers_the_flipped_pixels_and_its_mask_flips_with_it():
    image = torch.zeros(*SIZE)
    image[10:20, 30:50] = 1
    box = torch.tensor([[30.0, 10, 50, 20]])
    for flip in FLIPS.values():
        x0, y0, x1, y1 = flip.boxes(box, SIZE)[0].long().tolist()
        view = flip.maps(image)
        assert view[y0:y1, x0:x1].sum() == 200 and view.sum() == 200
    # An RoI mask sampled on a box's grid in the flipped view, flipped back, is the
    # mask sampled on the original box: the grid's column j mirrors to column M-1-j.
    from torchvision.ops import roi_align

    img = torch.rand(1, 1, *SIZE)
    roi = torch.tensor([[0, 12.3, 5.2, 70.9, 41.7]])
    for flip in FLIPS.values():
        view_roi = torch.cat([roi[:, :1], flip.boxes(roi[:, 1:], SIZE)], 1)
        a = roi_align(img, roi, 14, 1.0, 2, aligned=True)[0, 0]
        b = roi_align(flip.maps(img), view_roi, 14, 1.0, 2, aligned=True)[0, 0]
        assert torch.allclose(flip.maps(b), a, atol=1e-5)


@pytest.mark.parametrize("name", ["h", "v", "hv"])
def test_unflipped_rpn_outputs_decode_to_the_unflipped_proposals(name):
    """Decoding a view's RPN outputs on its own anchors and flipping the boxes back gives
    the same boxes as un-flipping the outputs onto the original anchors (needs anchors
    centred on their cells)."""
    flip = FLIPS[name]
    model = build_model(load_config(None, TINY).model, ["cell"]).eval()
    img, _ = two_cells()
    image_list, anchors, outputs = random_rpn_outputs(model, img, seed=1)
    size = tuple(image_list.tensors.shape[-2:])
    whole = (0.0, 0.0, float(size[1]), float(size[0]))
    params = ProposalParams(pre_nms_top_n=50, nms_iou=0.7, post_nms_top_n=None)
    (in_view,) = select_proposals(outputs, anchors, model.rpn.box_coder, [whole], params)
    (unflipped,) = select_proposals(
        flip.rpn(outputs), anchors, model.rpn.box_coder, [whole], params
    )
    a = flip.boxes(in_view, size)
    order = lambda b: b[torch.argsort(b[:, 0] * 1e4 + b[:, 1])]  # noqa: E731
    assert len(a) == len(unflipped) > 10
    assert torch.allclose(order(a), order(unflipped), atol=1e-3)


def test_parse_flips():
    assert parse_flips(["none", "hv"]) == (Flip(), Flip(True, True))
    with pytest.raises(CellstackError, match="unknown flip diagonal"):
        parse_flips(["diagonal"])
