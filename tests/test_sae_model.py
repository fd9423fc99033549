"""The SAE's math and its file: TopK sparsity, the round trip, and clear errors."""

from __future__ import annotations

import pytest
import torch

from twofiles.errors import BadInputError
from twofiles.sae.model import SAEConfig, SparseAutoencoder, load_sae, save_sae


def test_topk_keeps_k_features_and_the_file_round_trips(tmp_path):
    sae = SparseAutoencoder(SAEConfig(d_in=16, d_sae=64, k=4, hook_name="blocks.1.hook_resid_post"))
    x = torch.randn(10, 16, generator=torch.Generator().manual_seed(0))
    f = sae.encode(x)
    assert f.shape == (10, 64) and torch.all(f >= 0)
    assert torch.all((f > 0).sum(-1) <= 4)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))
    path = save_sae(tmp_path / "sae.safetensors", sae)
    back = load_sae(tmp_path)  # a directory holding sae.safetensors
    assert back.cfg == sae.cfg and path.is_file()
    torch.testing.assert_close(back(x), sae(x))


def test_relu_reconstruction_is_the_decoder_of_the_code():
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=32, kind="relu"))
    x = torch.randn(5, 8)
    torch.testing.assert_close(sae(x), sae.decode(sae.encode(x)))
    assert torch.equal(sae.direction(3), sae.W_dec[3])
    with pytest.raises(BadInputError, match="features 0..31"):
        sae.direction(32)


def test_bad_files_and_configs_are_refused(tmp_path):
    with pytest.raises(BadInputError, match="no such SAE file"):
        load_sae(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(BadInputError):
        load_sae(tmp_path / "junk.safetensors")
    with pytest.raises(BadInputError, match="expected topk or relu"):
        SAEConfig(d_in=4, d_sae=8, kind="gated")
    with pytest.raises(BadInputError, match="bad SAE shape"):
        SAEConfig(d_in=4, d_sae=8, k=9)
