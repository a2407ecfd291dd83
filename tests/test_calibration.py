"""The calibrated sampler (udaqa_pipeline.model.calibration): noise model, fit, baseline, and the run's
fit on held-out rows end to end on a toy cache."""

import importlib
import numpy as np
import pytest
import torch

from udaqa_pipeline.cache import open_cache
from udaqa_pipeline.model.calibration import (HeldOut, concat_heldout, fit_calibration, laplace_noise,
                                        residual_panels, sample_panels)
from udaqa_pipeline.evaluation.evaluate import evaluate
from udaqa_pipeline.model import UDAQA, ModelConfig
from udaqa_pipeline.testing import write_toy_cache
from udaqa_pipeline.inference.run import load_run
from udaqa_pipeline.runs.checkpoint import CHECKPOINT, load_checkpoint
from udaqa_pipeline.engine.fit import build_fit
from udaqa_pipeline.engine.run import train
from udaqa_pipeline.data.trainset import Labels

pytestmark = pytest.mark.usefixtures("one_thread")


def test_laplace_noise_is_a_standard_laplace():
    x = laplace_noise(np.random.default_rng(0).random(200_000))
    assert abs(x.mean()) < 0.01 and np.mean(np.abs(x)) == pytest.approx(1.0, abs=0.01)  # E|X| = b
    assert np.var(x) == pytest.approx(2.0, rel=0.02)  # Var = 2 b^2
    assert np.isfinite(laplace_noise(np.array([0.0, 1.0]))).all()


def test_sample_panels_follows_the_equation():
    loc = np.full((1, 2, 3), 0.5)
    lap, gauss = np.ones((1, 2, 3)), np.array([[2.0, -1.0]])
    y = sample_panels(loc, 0.3, 0.25, lap, gauss)
    np.testing.assert_allclose(y[0, 0], 0.5 + 0.3 + 0.5)
    np.testing.assert_allclose(y[0, 1], 0.5 + 0.3 - 0.25)


def _synthetic_heldout(n=300, s=40, t=7, tau=0.03, sigma=0.06, seed=1, bias=0.0):
    """Held-out draws of a collapsed sampler (loc constant over draws, the paper's failure) on data
    made by the calibrated sampler's own equation with known tau and sigma; the sampler's centre is
    off the judges' by ``bias`` (scaled units)."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0.3, 0.8, n)
    err = rng.normal(0, sigma, n)  # what the model does not know about the performance
    real = centre[:, None] + err[:, None] + tau * laplace_noise(rng.random((n, t)))
    loc = np.repeat(centre[:, None, None] + bias, s, axis=1).repeat(t, axis=2)
    return HeldOut(loc=loc, real=list(real * 10), final=real.sum(axis=1) * 10, rule=["sum"] * n,
                   difficulty=np.full(n, np.nan), lo=np.zeros(n), hi=np.full(n, 10.0))


def _metrics(h, tau, sigma, seed=5):
    from udaqa_pipeline.model.calibration import _finals
    from udaqa_pipeline.metrics import interval_coverage, panel_coverage

    rng = np.random.default_rng(seed)
    n, s, t = h.loc.shape
    y = sample_panels(h.loc, tau, sigma, laplace_noise(rng.random((n, s, t))), rng.standard_normal((n, s)))
    panels = h.lo[:, None, None] + y * (h.hi - h.lo)[:, None, None]
    return (float(panel_coverage(panels, np.stack(h.real)).mean()),
            float(interval_coverage(_finals(h, y), h.final, levels=(0.8,))[0]))


def test_fit_recovers_the_generating_noise_and_its_intervals_are_calibrated_on_fresh_rows():
    fit = fit_calibration(_synthetic_heldout(seed=1))  # made with tau 0.03, sigma 0.06
    assert fit["nominal_coverage"] == 0.75 and fit["n_panel_rows"] == 300
    assert fit["tau"] == pytest.approx(0.03, rel=0.1) and fit["sigma"] == pytest.approx(0.06, rel=0.15)
    assert fit["coverage"][0] < 0.2  # the collapsed sampler
    # a point forecast has CRPS E|X| = 0.80 sd, the right spread about 0.56 sd
    assert fit["crps_final"][1] < 0.8 * fit["crps_final"][0]
    assert fit["crps_judges"][1] < 0.75 * fit["crps_judges"][0]
    # the true sampler covers about half of a real panel, not (T-1)/(T+1): panels share an offset
    cov_true, cov80_true = _metrics(_synthetic_heldout(seed=2), 0.03, 0.06)
    assert cov_true < 0.5 and 0.7 < cov80_true < 0.9
    assert fit["coverage"][1] == pytest.approx(fit["expected_coverage"], abs=0.03)  # and the fit's says so
    cov, cov80 = _metrics(_synthetic_heldout(seed=2), fit["tau"], fit["sigma"])  # rows the fit never saw
    assert cov == pytest.approx(fit["expected_coverage"], abs=0.04) and 0.70 <= cov80 <= 0.90
    cov0, cov80_0 = _metrics(_synthetic_heldout(seed=2), 0.0, 0.0)
    assert cov0 < 0.2 and cov80_0 < 0.3  # the collapsed sampler it replaces


@pytest.mark.parametrize("sigma", [0.02, 0.12])
def test_judge_scale_is_the_panels_disagreement_whatever_the_models_error(sigma):
    # tau from the real panels' own spread: a model 6x worse on the performance as a whole gets the
    # same judge scale and a sigma that follows its error (module doc, fit step 2)
    fit = fit_calibration(_synthetic_heldout(seed=1, sigma=sigma))
    assert fit["tau"] == pytest.approx(0.03, rel=0.1)
    assert fit["sigma"] == pytest.approx(sigma, rel=0.15)


def test_fit_removes_the_samplers_bias_and_the_model_applies_it():
    fit = fit_calibration(_synthetic_heldout(seed=1, bias=-0.05))
    assert fit["mu"] == pytest.approx(0.05, abs=0.01)  # the median judge-mean residual, scaled units
    unbiased = fit_calibration(_synthetic_heldout(seed=1))
    assert abs(unbiased["mu"]) < 0.01
    # once shifted, the rest of the fit is the unbiased one's
    assert fit["tau"] == pytest.approx(unbiased["tau"], rel=0.15) and fit["crps_judges"][1] < 1.05 * unbiased["crps_judges"][1]
    assert fit["crps_judges"][0] > unbiased["crps_judges"][0]  # "before" is the unshifted paper sampler
    torch.manual_seed(0)
    m = UDAQA(ModelConfig(feat_dim=16, latent_input="feature"))
    x = torch.rand(4, 10, 16)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    paper_loc = m.sample_judges(x, None, 7, 5, generator=gen())[0]
    m.set_calibration(0.0, 0.0, 0.0, mu=0.1)  # scaled units: 0..1 -> 0.1 of the default unit range
    loc, judges, _ = m.sample_judges(x, None, 7, 5, generator=gen())
    torch.testing.assert_close(loc, paper_loc + 0.1)  # the point prediction moves with the centre
    torch.testing.assert_close(judges, loc)
    torch.testing.assert_close(m.sample_judges(x, None, 7, 5, generator=gen(), calibrated=False)[0], paper_loc)


def test_fit_on_single_labels_uses_the_judge_scale_only():
    h = _synthetic_heldout(t=1, sigma=0.0, tau=0.05)
    fit = fit_calibration(h)
    assert fit["sigma"] == 0.0 and fit["n_panel_rows"] == 0 and fit["mu"] == 0.0  # no shift without panels (module doc)
    assert fit["tau"] == pytest.approx(0.05, rel=0.2)  # with one label, the judge scale is all there is


def test_concat_and_residual_panels():
    a, b = _synthetic_heldout(n=3), _synthetic_heldout(n=2, seed=2)
    c = concat_heldout([a, b])
    assert c.loc.shape == (5, 40, 7) and len(c.real) == 5 and c.final[3] == b.final[0] and c.hi.shape == (5,)
    assert concat_heldout([]) is None
    pan = residual_panels(np.array([5.0, 7.0]), np.array([-0.5, 0.5]), 7, 3, seed=0)
    assert pan.shape == (2, 3, 7) and set(np.unique(pan[0])) <= {4.5, 5.5} and set(np.unique(pan[1])) <= {6.5, 7.5}


def test_model_sampler_adds_the_fitted_noise_and_keeps_the_paper_one():
    torch.manual_seed(0)
    m = UDAQA(ModelConfig(feat_dim=16, latent_input="feature"))
    x = torch.rand(4, 10, 16)

    def draw(calibrated=True):
        return m.predict_judges(x, None, 7, 50, generator=torch.Generator().manual_seed(0), calibrated=calibrated)[0]

    paper = draw()
    m.set_calibration(0.3, 0.2)
    assert torch.equal(draw(calibrated=False), paper)  # the paper's sampler is still there, unchanged
    cal = draw()
    assert cal.std(dim=2).mean() > 5 * paper.std(dim=2).mean()  # judges disagree within a panel
    panel_means = cal.mean(dim=2)
    assert panel_means.std(dim=1).mean() > 0.15  # panels move as a whole (sigma = 0.2), not only judges
    assert (cal.mean(dim=(1, 2)) - paper.mean(dim=(1, 2))).abs().max() < 0.15  # zero-mean noise


def test_run_fits_its_calibration_on_the_validation_split_and_evaluate_uses_it(tmp_path):
    cache = write_toy_cache(tmp_path / "toy", n=64, noise=0.2)
    ov = ["train.batch_size=8", "train.lr=3e-3", "train.wa_hidden=16", "train.video_channels=[4,8,8,8]",
          "train.eval_samples=8", "train.epochs=6", "train.val_fraction=0.3"]
    run = train("mtl", cache=cache, run_dir=tmp_path / "r", overrides=ov, progress=False)
    ck = load_checkpoint(run / CHECKPOINT)
    cal = ck["calibration"]
    assert cal["fitted_on"] == "validation split" and cal["n_rows"] == len(ck["split"]["select"])
    assert cal["tau"] > 0 and cal["crps_final"][1] <= cal["crps_final"][0]
    r = load_run(run)
    assert cal["step"] == 0.5  # stages/mtl.toml: awards in halves
    assert r.model.calib.tolist() == pytest.approx([cal["tau"], cal["sigma"], cal["step"], cal["mu"]])
    paper = evaluate(run, cache=cache, sampler="paper").metrics
    calibrated = evaluate(run, cache=cache).metrics
    resid = evaluate(run, cache=cache, sampler="residual").metrics
    assert calibrated["runs"]["r"]["sampler"] == "calibrated" and paper["runs"]["r"]["sampler"] == "paper"
    # the paper sampler's panels are collapsed; the fitted ones spread like real panels
    pp, cp, rp = paper["panel"]["T7"], calibrated["panel"]["T7"], resid["panel"]["T7"]
    assert pp["sampled_sd"] < 0.2 * pp["real_sd"] and cp["sampled_sd"] > 0.5 * cp["real_sd"]
    assert cp["coverage"] > pp["coverage"] and cp["crps"] < pp["crps"]
    assert rp["coverage"] > pp["coverage"]
    fc = calibrated["final_calibration"]["interval_coverage"]
    assert fc["0.9"] > paper["final_calibration"]["interval_coverage"]["0.9"]
    # the calibration is written once: a rerun of the finished run keeps it
    train("mtl", cache=cache, run_dir=tmp_path / "r", overrides=ov, progress=False)
    assert load_checkpoint(run / CHECKPOINT)["calibration"] == cal
    # the paper's recipe stays one switch away
    none = train("mtl", cache=cache, run_dir=tmp_path / "n", overrides=ov + ["train.calibrate=none"], progress=False)
    assert load_checkpoint(none / CHECKPOINT).get("calibration") is None


def test_oof_calibration_trains_its_inner_models_on_the_validation_split_too(tmp_path, monkeypatch):

    cache = write_toy_cache(tmp_path / "toy", n=48, noise=0.2)
    ov = ["train.batch_size=8", "train.wa_hidden=16", "train.video_channels=[4,8,8,8]", "train.eval_samples=4",
          "train.epochs=2", "train.val_fraction=0.25", "train.calibrate=oof", "train.inner_folds=3"]
    built, real_build = [], build_fit
    for where in ("udaqa_pipeline.engine.loop", "udaqa_pipeline.engine.selection"):
        monkeypatch.setattr(importlib.import_module(where), "build_fit", lambda cfg, data, rows, **k:
                            built.append(np.asarray(rows)) or real_build(cfg, data, rows, **k))
    run = train("mtl", cache=cache, run_dir=tmp_path / "r", overrides=ov, progress=False)
    ck = load_checkpoint(run / CHECKPOINT)
    ids = Labels.from_table(open_cache(cache).samples).ids
    pos = {s: i for i, s in enumerate(ids)}
    fit, sel = ({pos[s] for s in ck["split"][k]} for k in ("fit", "select"))
    kept, inner = set(built[0].tolist()), [set(b.tolist()) for b in built[1:]]
    assert kept == fit and len(inner) == 3
    # each inner model: the validation rows and two thirds of the fit rows; together every fit row held out once
    assert all(sel <= b and b - sel < fit for b in inner)
    assert sorted(i for b in inner for i in fit - b) == sorted(fit)
    cal = ck["calibration"]
    assert "each also trained on the validation split" in cal["fitted_on"]
    assert cal["n_rows"] == len(fit) + len(sel)


def test_oof_calibration_with_too_few_fit_rows_says_it_used_the_validation_split(tmp_path, caplog):
    cache = write_toy_cache(tmp_path / "toy", n=32, noise=0.2)
    ov = ["train.batch_size=8", "train.wa_hidden=16", "train.video_channels=[4,8,8,8]", "train.eval_samples=4",
          "train.epochs=1", "train.val_fraction=0.25", "train.calibrate=oof", "train.inner_folds=20"]
    run = train("mtl", cache=cache, run_dir=tmp_path / "r", overrides=ov, progress=False)
    assert load_checkpoint(run / CHECKPOINT)["calibration"]["fitted_on"] == "validation split"
    assert "calibration is fitted on the validation split alone (lower train.inner_folds" in caplog.text


def test_awards_are_the_judge_scale_in_numpy_and_in_the_model_sampler():
    from udaqa_pipeline.model.calibration import awards

    got = awards(np.array([[-0.3, 4.74, 4.76, 10.4]]), np.array([0.0]), np.array([10.0]), 0.5)
    np.testing.assert_array_equal(got, [[0.0, 4.5, 5.0, 10.0]])
    assert awards(np.array([[4.74]]), np.array([0.0]), np.array([10.0]), 0.0)[0, 0] == 4.74
    torch.manual_seed(0)
    m = UDAQA(ModelConfig(feat_dim=16, latent_input="feature"))
    m.set_scaling(torch.tensor([0.0]), torch.tensor([10.0]))
    m.set_calibration(0.3, 0.2, 0.5)
    j = m.predict_judges(torch.rand(4, 10, 16), None, 7, 50, generator=torch.Generator().manual_seed(0))[0]
    assert torch.equal(j, torch.round(j * 2) / 2) and j.min() >= 0 and j.max() <= 10 and j.std() > 0.5


@pytest.mark.parametrize("sets, match", [
    (["train.award_step=-0.5"], "must be 0 .continuous draws. or a positive"),
    (["train.award_step=0.3"], "ends of train.label_range .0, 10. are not"),
    (["train.award_step=0.5", "train.label_range=[]"], "needs train.label_range"),
    (["train.inner_folds=1.5"], "train.inner_folds takes a whole number"),
    (["train.inner_folds=1"], "at least 2, not 1"),
])
def test_award_step_config_errors_say_what_to_set(sets, match):
    from udaqa_pipeline.config import ConfigError
    from udaqa_pipeline.config import resolve

    assert resolve("mtl").train.award_step == 0.5
    with pytest.raises(ConfigError, match=match):
        resolve("mtl", sets)
