"""Inference from a trained run: sampled judge panels and final scores (``predict``), the paper
sampler's raw draws for the calibration fit (``heldout_draws``), predicted uncertainties."""
