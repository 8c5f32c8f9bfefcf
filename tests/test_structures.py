import numpy as np
import pytest
import torch

from cellstack.structures import Instances


def _inst(n=4):
    return Instances(
        (10, 12),
        boxes=np.arange(4 * n, dtype=np.float32).reshape(n, 4),
        scores=np.linspace(0.1, 0.9, n).astype(np.float32),
        names=[f"c{i}" for i in range(n)],
    )


def test_indexing_applies_to_every_field():
    inst = _inst()
    kept = inst[inst.scores > 0.5]
    assert len(kept) == 2 and kept.names == ["c2", "c3"]
    np.testing.assert_array_equal(kept.boxes, inst.boxes[2:])
    one = inst[1]
    assert len(one) == 1 and one.names == ["c1"] and one.boxes.shape == (1, 4)
    assert inst[np.array([3, 0])].names == ["c3", "c0"]
    assert inst[-1].names == ["c3"]
    with pytest.raises(IndexError):
        inst[4]


def test_immutable_replace_and_cat():
    inst = _inst()
    with pytest.raises(AttributeError, match="immutable"):
        inst.scores = None
    doubled = inst.replace(scores=inst.scores * 2)
    assert doubled.scores[0] == pytest.approx(0.2) and inst.scores[0] == pytest.approx(0.1)
    assert not inst.replace(names=None).has("names")
    both = Instances.cat([inst, inst[:2]])
    assert len(both) == 6 and both.names[-1] == "c1"
    with pytest.raises(AttributeError, match="no field 'masks'"):
        inst.masks


def test_lengths_must_agree_and_torch_fields():
    with pytest.raises(ValueError, match="different lengths"):
        Instances((5, 5), boxes=np.zeros((2, 4)), scores=np.zeros(3))
    t = Instances((5, 5), boxes=torch.zeros(3, 4), classes=torch.tensor([0, 1, 2]))
    sel = t[t.classes > 0]
    assert sel.classes.tolist() == [1, 2]
    assert len(Instances.cat([t, sel])) == 5
    assert t.to("cpu").boxes.device.type == "cpu"
    assert "n=3" in repr(t)
