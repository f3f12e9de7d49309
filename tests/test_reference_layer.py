"""The B'MOJO mixer equals the numbered paper listing in `reference.py` (explicit loops, Python sorting)."""

import pytest
import torch

from bmojo.modeling_bmojo.reference import bmojo_layer_reference
from conftest import tiny_model


@torch.no_grad()
@pytest.mark.parametrize("overrides", [
    dict(),
    dict(qk_norm=True, tie_fading_projections=False, eidetic_capacity=None),
    dict(eidetic_capacity=0, fading_tokens=3),
    dict(window_size=6, fading_tokens=2, eidetic_tokens_per_chunk=3, eidetic_capacity=5, num_key_value_heads=2),
])
def test_mixer_matches_paper_listing(overrides):
    model = tiny_model(seed=1, **overrides)
    mixer = model.model.layers[0].mixer
    x = torch.randn(2, 61, model.config.hidden_size, generator=torch.Generator().manual_seed(7))
    y, _ = mixer(x, torch.tensor([61, 61]))
    for row in range(2):
        expected, _, stores = bmojo_layer_reference(mixer, x[row])
        err = (y[row].double() - expected).abs().max() / expected.abs().max()
        assert err < 1e-5, f"relative error {err:.2e}"
    if mixer.eidetic:
        assert len(stores[-1]) > 0, "the test must exercise a non-empty store"
