"""UD-AQA model pieces and loss terms against hand-computed values and torch.distributions."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from udaqa_pipeline.datasets.rules import apply_rule
from udaqa_pipeline.model import UDAQA, ModelConfig
from udaqa_pipeline.model.heads import VideoEncoder, WeightAttention
from udaqa_pipeline.model.losses import kl_gaussian, raqa_loss, total_loss, uncertainty_consistency

SMALL = dict(wa_hidden=16, video_channels=(4, 4, 8, 8))


pytestmark = pytest.mark.usefixtures("one_thread")


def test_raqa_loss_hand_computed():
    y_hat = torch.tensor([0.5, 0.2])
    y = torch.tensor([0.3, 0.6])
    u = torch.tensor([0.0, math.log(2.0)])
    # sample 1: e^0 * 0.2 + 0 = 0.2 ; sample 2: 0.5 * 0.4 + ln 2
    want = (0.2 + (0.2 + math.log(2.0))) / 2
    assert raqa_loss(y_hat, y, u).item() == pytest.approx(want, abs=1e-6)
    assert raqa_loss(y_hat, y, None).item() == pytest.approx((0.2 + 0.4) / 2, abs=1e-6)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu_q, lv_q, mu_p, lv_p = (torch.randn(5, 6, generator=g) for _ in range(4))
    ours = kl_gaussian(mu_q, lv_q, mu_p, lv_p)
    ref = kl_divergence(Normal(mu_q, (0.5 * lv_q).exp()), Normal(mu_p, (0.5 * lv_p).exp())).sum(-1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    # hand value, one dim: q = N(1, 1), p = N(0, 4): 0.5*(ln4 - 0 + (1 + 1)/4 - 1)
    one = kl_gaussian(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[0.0]]),
                      torch.tensor([[math.log(4.0)]]))
    assert one.item() == pytest.approx(0.5 * (math.log(4.0) + 0.5 - 1.0), abs=1e-6)


def test_uncertainty_consistency_and_total():
    assert uncertainty_consistency(torch.tensor([1.0, -1.0]), torch.tensor([0.5, 0.0])).item() == \
        pytest.approx(0.75)
    out = {"y_hat": torch.tensor([0.5]), "u": torch.tensor([0.0]), "u_prior": torch.tensor([0.3]),
           "mu_q": torch.zeros(1, 2), "logvar_q": torch.zeros(1, 2),
           "mu_p": torch.ones(1, 2), "logvar_p": torch.zeros(1, 2)}
    t = total_loss(out, torch.tensor([0.25]), alpha=1.0, beta=10.0)
    # raqa 0.25; KL = 2 dims * 0.5 * 1 = 1.0; L_u = 0.3 -> 0.25 + 1.0 + 3.0
    assert t["raqa"].item() == pytest.approx(0.25)
    assert t["kl"].item() == pytest.approx(1.0)
    assert t["u"].item() == pytest.approx(0.3)
    assert t["loss"].item() == pytest.approx(4.25)
    t2 = total_loss(out, torch.tensor([0.25]), alpha=2.0, beta=0.0)
    assert t2["loss"].item() == pytest.approx(0.25 + 2.0)


def test_weight_attention_is_convex_combination_per_dim():
    wa = WeightAttention(8, 4)
    f = torch.rand(3, 5, 8)
    v = wa(f)
    assert v.shape == (3, 8)
    assert torch.all(v <= f.max(1).values + 1e-6) and torch.all(v >= f.min(1).values - 1e-6)


def test_video_encoder_shape_and_uint8_range():
    enc = VideoEncoder((16, 32, 64, 128)).eval()
    x = torch.randint(0, 256, (2, 103, 3, 64, 64), dtype=torch.uint8)
    assert enc(x).shape == (2, 128)


@pytest.mark.parametrize("kw", [dict(), dict(use_wa=False), dict(latent_input="feature"),
                                dict(regressors=2), dict(use_cvae=False, use_uncertainty=False)])
def test_model_variants_forward_and_sample(kw):
    torch.manual_seed(0)
    m = UDAQA(ModelConfig(**SMALL, **kw))
    m.set_scaling(torch.tensor([0.0]), torch.tensor([10.0]))
    f = torch.rand(4, 10, 1024)
    v = torch.randint(0, 256, (4, 8, 3, 16, 16), dtype=torch.uint8)
    out = m.train()(f, v, torch.rand(4))
    assert out["y_hat"].shape == (4,)
    t = total_loss(out, torch.rand(4), mean_target=torch.rand(4))
    t["loss"].backward()
    judges, u = m.predict_judges(f, v, n_judges=7, n_samples=3)
    assert judges.shape == (4, 3, 7) and u.shape == (4,)
    if kw.get("use_cvae", True):
        assert judges.std() > 0  # different latent draws give different judges


def test_invalid_ablation_combinations_refused():
    with pytest.raises(ValueError, match="use_cvae"):
        ModelConfig(use_cvae=False, use_uncertainty=True)
    with pytest.raises(ValueError, match="latent_input"):
        ModelConfig(latent_input="nope")


def test_scoring_rules_on_sampled_judges():
    """Sampled panels (B, S, T) in score units go through the dataset's rule per draw."""
    torch.manual_seed(0)
    m = UDAQA(ModelConfig(**SMALL))
    m.set_scaling(torch.tensor([0.0]), torch.tensor([10.0]))
    f = torch.rand(2, 10, 1024)
    v = torch.randint(0, 256, (2, 8, 3, 16, 16), dtype=torch.uint8)
    g = torch.Generator().manual_seed(1)
    judges, _ = m.predict_judges(f, v, 7, 5, generator=g)
    j = judges.numpy().astype(np.float64)
    dd = np.array([3.2, 2.0])
    finals = apply_rule("mtl_middle3", j, dd[:, None])
    manual = np.sort(j, axis=-1)[..., 2:5].sum(-1) * dd[:, None]
    np.testing.assert_allclose(finals, manual)
    assert finals.shape == (2, 5)
    # score units: scaled prediction y_s maps to y_s * 10
    g2 = torch.Generator().manual_seed(1)
    ys, _ = m.sample_scaled(f, v, 35, g2)
    np.testing.assert_allclose(j.reshape(2, 35), ys.numpy() * 10.0, rtol=1e-5)


def test_per_group_scaling_to_score_units():
    m = UDAQA(ModelConfig(**SMALL, n_groups=2))
    m.set_scaling(torch.tensor([0.0, 10.0]), torch.tensor([1.0, 30.0]))
    y = m.to_score_units(torch.tensor([[0.5], [0.5]]), torch.tensor([0, 1]))
    assert y.flatten().tolist() == [0.5, 20.0]
