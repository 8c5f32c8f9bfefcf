"""The one-line error family: a library's message quoted into ours."""

from __future__ import annotations

from cellstack.errors import quote


def test_a_quoted_reason_is_cut_between_words_on_its_first_line():
    torch_like = (
        "Error(s) in loading state_dict for CellDetector:\n\tsize mismatch for "
        "backbone.fpn.inner.0.weight: copying a param with shape torch.Size([16, 64, 1, 1]) "
        "from checkpoint, the shape in current model is torch.Size([24, 64, 1, 1])."
    )
    assert quote(torch_like) == "Error(s) in loading state_dict for CellDetector:"
    long = "size mismatch for backbone.fpn.inner.0.weight: copying a param with shape"
    cut = quote(long, 40)
    assert cut == "size mismatch for ..." and len(cut) <= 40
    assert long.startswith(cut[: -len(" ...")])  # whole words only
    assert quote("short reason") == "short reason"
    assert quote("\n\n") == ""
