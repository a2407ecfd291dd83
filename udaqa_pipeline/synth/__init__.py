"""Procedural diving clips with simulated judges, written in the MTL-AQA published layout.

The built-in sample dataset: a new user has no MTL-AQA frames, yet ``make demo`` and the end-to-end
test must run the real pipeline (decode -> frozen I3D -> cache -> heads -> metrics) on something a
judge could score. Each dive is rendered frame by frame from a small physical model, one module per
step of the generation:

==============  ===============================================================================
module          what it does
==============  ===============================================================================
``dives``       the scene of each source video (10 m platform or 3 m springboard, colours,
                camera) and each dive's type (group, somersaults, twists, position), dive number,
                degree of difficulty (additive FINA approximation, 1.5..4.1) and quality factors
``judges``      a fixed panel of 7 judges with their own weights, bias and noise, awarding on the
                diving scale; the final score is ``datasets.rules``' ``mtl_middle3``
                (middle 3 x DD, REFERENCE section 3), so the rule holds exactly for every dive
``physics``     a 3-D jointed body (19 joints) posed by five angles; the dive's timeline: take-off,
                ballistic flight, somersaults whose angular velocity follows the pose's moment of
                inertia (a tuck spins fast), twists, kick-out, entry
``render``      the event's static scene, an anti-aliased capsule/ellipse canvas, a tracking
                camera, and the splash (spray, crown, foam, ripple) sized by the entry
``write``       :class:`SynthConfig`, the split, the pickles and JPEGs, the completeness stamp,
                :func:`generate`
``cli``         ``python -m udaqa_pipeline.synth OUT --n 72 --seed 0``
==============  ===============================================================================

Layout written under ``out`` (the MUSDL trimmed-frames layout with CoRe's annotation file)::

    frames/{vv:02d}_{dd:02d}/{k:05d}.jpg         n_frames JPEGs per dive (default 103, 320x240)
    info/final_annotations_dict_with_dive_number.pkl  {(vv, dd): {published fields}}
    info/train_split_0.pkl, info/test_split_0.pkl    lists of (vv, dd) tuples
    info/synth.json                               generator version, config, per-dive factors;
                                                  written last: its presence marks a complete set

Determinism: every dive draws from its own ``SeedSequence((seed, vv, dd))`` stream and every scene
from ``(seed, vv)``, so the same seed gives byte-identical frames and pickles whatever the number of
worker processes, and dive (vv, dd) is the same dive in a larger set of the same seed (as long as
``dives_per_video`` is unchanged).
"""

from .cli import main
from .dives import (
    GROUPS, POSITION_CODE, POSITION_LETTER, DiveSpec, Event, degree_of_difficulty, dive_number, draw_dive, draw_event,
)
from .judges import N_JUDGES, PENALTY_WEIGHTS, RULE, JudgePanel, penalties, round_half
from .physics import (
    ARMS_UP, CROUCH, STAND, TAKEOFF, Trajectory, body_points, centre_of_mass, dive_trajectory, entry_pose,
    moment_of_inertia, position_pose,
)
from .render import Canvas, render_background, render_dive
from .write import ANNOTATION_FILE, GENERATOR_VERSION, SynthConfig, generate, is_complete, read_stamp, split_keys

__all__ = [
    "ANNOTATION_FILE", "ARMS_UP", "CROUCH", "Canvas", "DiveSpec", "Event", "GENERATOR_VERSION", "GROUPS", "JudgePanel",
    "N_JUDGES", "PENALTY_WEIGHTS", "POSITION_CODE", "POSITION_LETTER", "RULE", "STAND", "SynthConfig", "TAKEOFF",
    "Trajectory", "body_points", "centre_of_mass", "degree_of_difficulty", "dive_number", "dive_trajectory",
    "draw_dive", "draw_event", "entry_pose", "generate", "is_complete", "main", "moment_of_inertia", "penalties",
    "position_pose", "read_stamp", "render_background", "render_dive", "round_half", "split_keys",
]
