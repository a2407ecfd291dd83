"""Procedural diving clips with simulated judges, written in the MTL-AQA published layout.

The built-in sample dataset: a new user has no MTL-AQA frames, yet ``make demo`` and the end-to-end
test must run the real pipeline (decode -> frozen I3D -> cache -> heads -> metrics) on something a
judge could score. Each dive is rendered frame by frame from a small physical model:

* **Body.** A 3-D jointed figure (hips, knees, ankles, shoulders, elbows, head; 17 capsules)
  posed by hip flexion, knee flexion, leg split, arm angle and elbow flexion, twisted about its long
  axis, seen from the side (orthographic), mirrored by the facing direction and rotated about its
  centre of mass. Capsules are drawn as signed-distance fields with one-pixel coverage ramps, so
  edges are anti-aliased without supersampling; painter's order by depth, far-side limbs shaded.
* **Dive.** Stand, arm swing, crouch (springboard deflects), take-off with a vertical and a
  horizontal velocity, ballistic flight of the centre of mass, somersaults whose angular velocity
  is inversely proportional to the pose's moment of inertia (tight tuck spins fast, the opened body
  slowly: conservation of angular momentum), optional twists, kick-out to a straight line, entry,
  and a splash (particle spray, crown, foam, ripple ring) whose size follows the entry.
* **Scene and camera.** One scene per source video ("event"): 10 m platform or 3 m springboard,
  sky gradient with clouds, building facade, crowd, tower, pool with lane ropes and animated
  shimmer. The camera tracks the diver vertically with lag, pans slightly and zooms slowly.
* **Quality.** Seven factors a judge sees, each in [0, 1] (1 = perfect) and each driven by one
  latent diver skill plus its own noise: jump height, distance from the board, position tightness,
  rotation completed (entry angle error in degrees), body line at entry (knees, pike, split legs),
  entry technique (rip) and kick-out timing. Splash size is a function of the entry (angle, line,
  rip, timing), not an independent draw, so what the judges penalise is what the frames show.
* **Difficulty.** Dive group (forward/back/reverse/inward, rotation direction and facing follow
  from it), half somersaults (1, 3, 5, 7, 9), half twists (0..5) and position (straight/pike/tuck/
  free) give a dive number like ``'107B'`` / ``'5253B'`` and a degree of difficulty by an additive
  approximation of the FINA table, clipped to MTL-AQA's 1.5..4.1.
* **Judges.** A fixed panel of 7 (one per seat, same for the whole dataset, drawn from the seed):
  each judge deducts ``sum_k w_jk * penalty_k`` from 9.8 with its own weights ``w_jk`` (log-normal
  around shared weights), its own bias (normal, sd 0.3) and its own noise (sd 0.25..0.5), clipped to
  0..10 and rounded to 0.5. ``final_score = sum(sorted(judges)[2:5]) * difficulty`` (the MTL-AQA
  rule, REFERENCE section 3), so the rule holds exactly for every dive.

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

Run ``python -m udaqa_pipeline.synth OUT --n 72 --seed 0``.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

#: Bump when the rendered frames or the annotations change for the same config, so a cached
#: dataset from an older generator is regenerated rather than reused.
GENERATOR_VERSION = 1

ANNOTATION_FILE = "final_annotations_dict_with_dive_number.pkl"
N_JUDGES = 7
G = 9.81
#: Broadcast frame rate; 103 frames at 25 fps = 4.12 s, the MTL-AQA trimmed clip length.
FPS = 25.0
CLIP_SECONDS = 103 / FPS

GROUPS = {1: "forward", 2: "back", 3: "reverse", 4: "inward"}
POSITION_LETTER = {"straight": "A", "pike": "B", "tuck": "C", "free": "D"}
#: MTL-AQA's integer codes are not documented with the release; these follow the letter order.
POSITION_CODE = {"straight": 1, "pike": 2, "tuck": 3, "free": 4}


# --------------------------------------------------------------------------------------------
# Pure scoring functions
# --------------------------------------------------------------------------------------------


def mtl_final_score(judges: np.ndarray, difficulty: float) -> float:
    """MTL-AQA rule: drop the two highest and two lowest of 7 awards, sum the middle 3, times DD."""
    j = np.sort(np.asarray(judges, dtype=np.float64))
    if j.shape != (N_JUDGES,):
        raise ValueError(f"expected {N_JUDGES} judge scores, got shape {j.shape}")
    return float(j[2:5].sum() * difficulty)


def round_half(x: np.ndarray) -> np.ndarray:
    """Clip awards to 0..10 and round to the nearest 0.5 (half-way values round to even halves)."""
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * 2.0) / 2.0, 0.0, 10.0)


def degree_of_difficulty(group: int, n_half: int, n_half_twists: int, position: str, height_m: float) -> float:
    """Additive approximation of the FINA DD table, clipped to 1.5..4.1 and rounded to 0.1.

    Somersaults dominate (0.3 per half somersault: 101 = 1.4, 109 = 3.8), twists add 0.2 per half twist,
    a straight position costs +0.3 over pike (+0.15 over tuck), back/reverse/inward groups are
    harder than forward, and the same dive from 10 m is rated 0.1 lower than from 3 m (more time).
    Absolute agreement with FINA is not the point; a monotone, visible cause of DD is.
    """
    dd = 1.1 + 0.3 * n_half + 0.2 * n_half_twists
    dd += {"straight": 0.3, "pike": 0.15, "tuck": 0.0, "free": 0.1}[position]
    dd += {1: 0.0, 2: 0.15, 3: 0.25, 4: 0.2}[group]
    dd -= 0.1 if height_m > 5 else 0.0
    return float(np.clip(round(dd * 10) / 10, 1.5, 4.1))


def dive_number(group: int, n_half: int, n_half_twists: int, position: str) -> str:
    """FINA dive number: ``<group>0<half somersaults><letter>``, twisting ``5<group><half s><half t><letter>``."""
    letter = POSITION_LETTER[position]
    if n_half_twists:
        return f"5{group}{n_half}{n_half_twists}{letter}"
    return f"{group}0{n_half}{letter}"


#: Shared deduction weights (points off 10 at the worst value of each penalty, before judge
#: spread). Rotation and splash weigh most: they are what an entry is judged by.
PENALTY_WEIGHTS = {
    "height": 1.0,
    "distance": 0.8,
    "tightness": 1.1,
    "rotation": 2.1,
    "line": 1.1,
    "splash": 1.9,
    "timing": 0.6,
}


def penalties(factors: dict[str, float]) -> dict[str, float]:
    """Map quality factors (see :class:`DiveSpec`) to penalties in [0, 1] (0 = flawless)."""
    splash = (factors["splash"] - 0.15) / 1.6
    return {
        "height": 1.0 - factors["jump"],
        "distance": abs(factors["distance"]),
        "tightness": 1.0 - factors["tightness"],
        "rotation": min(abs(factors["rotation_error_deg"]) / 45.0, 1.5),
        "line": 1.0 - factors["line"],
        "splash": float(np.clip(splash, 0.0, 1.2)),
        "timing": abs(factors["timing"]),
    }


@dataclass(frozen=True)
class JudgePanel:
    """Seven judges: per-judge multiplicative weights on each penalty, additive bias, noise sd."""

    weights: np.ndarray  # (7, n_penalties), order of PENALTY_WEIGHTS
    bias: np.ndarray  # (7,)
    noise: np.ndarray  # (7,)

    @staticmethod
    def draw(seed: int) -> "JudgePanel":
        rng = np.random.default_rng(np.random.SeedSequence((seed, 7919)))
        base = np.array(list(PENALTY_WEIGHTS.values()))
        weights = base[None, :] * np.exp(rng.normal(0.0, 0.15, size=(N_JUDGES, base.size)))
        return JudgePanel(weights, rng.normal(0.0, 0.3, N_JUDGES), rng.uniform(0.25, 0.5, N_JUDGES))

    def expected(self, factors: dict[str, float]) -> np.ndarray:
        """Noise-free award of each judge (before rounding)."""
        pen = np.array([penalties(factors)[k] for k in PENALTY_WEIGHTS])
        return 9.8 - self.weights @ pen + self.bias

    def score(self, factors: dict[str, float], rng: np.random.Generator) -> np.ndarray:
        """Awards in 0..10, steps of 0.5, shape (7,), float64."""
        return round_half(self.expected(factors) + rng.normal(0.0, 1.0, N_JUDGES) * self.noise)


# --------------------------------------------------------------------------------------------
# Dive sampling
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One source video: a competition with its own venue, board and camera."""

    height_m: float  # 10.0 platform or 3.0 springboard
    springboard: bool
    sky_top: tuple[float, float, float]
    sky_bottom: tuple[float, float, float]
    facade: tuple[float, float, float]
    water: tuple[float, float, float]
    tower: tuple[float, float, float]
    ppm: float  # pixels per metre at 240 px frame height
    zoom_rate: float  # relative zoom per second
    cam_x0: float  # metres, horizontal anchor of the camera
    seed: int  # texture seed


def draw_event(seed: int, vv: int) -> Event:
    rng = np.random.default_rng(np.random.SeedSequence((seed, vv, 0xE7)))
    springboard = bool(rng.random() < 0.4)
    hue = rng.uniform(-1, 1)
    sky_top = (0.25 + 0.1 * hue, 0.45 + 0.1 * rng.random(), 0.85)
    sky_bottom = (0.72, 0.82 + 0.05 * rng.random(), 0.95)
    return Event(
        height_m=3.0 if springboard else 10.0,
        springboard=springboard,
        sky_top=sky_top,
        sky_bottom=sky_bottom,
        facade=tuple(float(c) for c in rng.uniform(0.45, 0.8, 3)),
        water=(0.05 + 0.1 * rng.random(), 0.35 + 0.15 * rng.random(), 0.6 + 0.15 * rng.random()),
        tower=tuple(float(c) for c in 0.55 + rng.uniform(-0.08, 0.08, 3)),
        ppm=float(rng.uniform(36.0, 42.0)),
        zoom_rate=float(rng.uniform(-0.01, 0.03)),
        cam_x0=float(rng.uniform(0.6, 1.1)),
        seed=int(rng.integers(2**31)),
    )


@dataclass(frozen=True)
class DiveSpec:
    """Everything that determines one dive's frames and scores."""

    group: int
    n_half: int
    n_half_twists: int
    position: str
    difficulty: float
    dive_number: str
    factors: dict[str, float]  # quality factors, see penalties()
    takeoff_s: float
    skin: tuple[float, float, float]
    suit: tuple[float, float, float]
    hair: tuple[float, float, float]
    arm_sep_deg: float
    split_sign: float
    seed: int


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def draw_dive(seed: int, vv: int, dd: int, event: Event) -> DiveSpec:
    """Draw a dive: its type (hence DD) and its quality factors.

    Type: half somersaults from {1: 8%, 3: 27%, 5: 30%, 7: 25%, 9 (platform only): 10%}; 30% of
    dives twist (1..5 half twists); position by type. Quality: every factor is
    ``sigmoid(0.9 * skill + 0.8 * noise + 1.4)`` (mean about 0.77; skill ~ N(0, 1) shared by the
    factors of one dive, so good divers are good at everything, as in competition).
    """
    rng = np.random.default_rng(np.random.SeedSequence((seed, vv, dd)))
    group = int(rng.integers(1, 5))
    halves = [1, 3, 5, 7, 9]
    p = np.array([0.08, 0.27, 0.30, 0.25, 0.10])
    if event.springboard:  # 4.5 somersaults are a platform dive
        p = np.array([0.10, 0.30, 0.33, 0.27, 0.0])
    n_half = int(rng.choice(halves, p=p / p.sum()))
    twists = int(rng.integers(1, 6)) if (rng.random() < 0.3 and n_half <= 7) else 0
    if twists:
        position = str(rng.choice(["free", "pike", "tuck"], p=[0.5, 0.3, 0.2]))
    elif n_half == 1:
        position = str(rng.choice(["straight", "pike"]))
    elif n_half >= 7:
        position = str(rng.choice(["pike", "tuck"], p=[0.4, 0.6]))
    else:
        position = str(rng.choice(["straight", "pike", "tuck"], p=[0.2, 0.4, 0.4]))
    dd = degree_of_difficulty(group, n_half, twists, position, event.height_m)

    skill = rng.normal()

    def q() -> float:
        return _sigmoid(0.9 * skill + 0.8 * rng.normal() + 1.4)

    def signed() -> float:
        return (1.0 - q()) * (1.0 if rng.random() < 0.5 else -1.0)

    jump, tight, line, rip = q(), q(), q(), q()
    distance, timing = signed(), signed()
    rot_err = 55.0 * signed()  # degrees at entry, + over-rotated
    # Splash height (m) follows the entry: angle error, body line, rip technique, rushed kick-out.
    splash = float(np.clip(0.12 + 1.1 * abs(rot_err) / 50 + 0.6 * (1 - line) + 0.8 * (1 - rip) + 0.25 * abs(timing), 0.1, 2.5))
    factors = {
        "jump": jump,
        "distance": distance,
        "tightness": tight if position != "free" else 0.5 + 0.5 * tight,
        "rotation_error_deg": rot_err,
        "line": line,
        "rip": rip,
        "timing": timing,
        "splash": splash,
        "skill": float(skill),
    }
    skin_tone = rng.uniform(0.35, 0.95)
    return DiveSpec(
        group=group,
        n_half=n_half,
        n_half_twists=twists,
        position=position,
        difficulty=dd,
        dive_number=dive_number(group, n_half, twists, position),
        factors={k: float(v) for k, v in factors.items()},
        takeoff_s=float(rng.uniform(-0.15, 0.15)),  # entry time offset, see dive_trajectory
        skin=(0.55 + 0.4 * skin_tone, 0.38 + 0.37 * skin_tone, 0.25 + 0.33 * skin_tone),
        suit=tuple(float(c) for c in rng.uniform(0.05, 0.9, 3)),
        hair=tuple(float(c) for c in rng.uniform(0.05, 0.3, 3) * np.array([1.0, 0.8, 0.6])),
        arm_sep_deg=float(12.0 * (1 - line) * rng.random()),
        split_sign=1.0 if rng.random() < 0.5 else -1.0,
        seed=int(rng.integers(2**31)),
    )


# --------------------------------------------------------------------------------------------
# Body model
# --------------------------------------------------------------------------------------------

# Pose vector: hip flexion, knee flexion, leg split, arm angle (0 = overhead, 90 = forward,
# 180 = down by the sides), elbow flexion; degrees.
STAND = np.array([0.0, 0.0, 0.0, 175.0, 5.0])
ARMS_UP = np.array([0.0, 0.0, 0.0, 0.0, 0.0])
CROUCH = np.array([45.0, 70.0, 0.0, 215.0, 10.0])
TAKEOFF = np.array([0.0, 0.0, 0.0, 10.0, 0.0])

# Segment masses (fraction of body mass) for the centre of mass and the moment of inertia.
_MASS = {"trunk": 0.50, "head": 0.08, "thigh": 0.10, "shin": 0.05, "arm": 0.05}


def position_pose(position: str, tightness: float) -> np.ndarray:
    """Pose held during the somersaults; a loose position bends less at hips/knees."""
    t = tightness
    if position == "tuck":
        return np.array([100 + 45 * t, 95 + 50 * t, 0.0, 125.0, 60.0])
    if position == "pike":
        return np.array([95 + 55 * t, 28 * (1 - t), 0.0, 140.0 - 20 * t, 10.0])
    if position == "free":  # twisting: straight body, arms wrapped on the chest
        return np.array([15 * (1 - t), 10 * (1 - t), 0.0, 150.0, 120.0])
    return np.array([25 * (1 - t), 8 * (1 - t), 0.0, 178.0, 5.0])  # straight


def entry_pose(line: float, split_sign: float) -> np.ndarray:
    """Pose at entry: arms overhead; a poor line keeps a pike at the hips, bent knees, split legs."""
    f = 1.0 - line
    return np.array([30 * f, 40 * f, 35 * f * split_sign, 3.0 + 25 * f, 15 * f])


def body_points(pose: np.ndarray, twist_deg: float, arm_sep_deg: float = 0.0) -> np.ndarray:
    """Joint positions (19, 3) in the body frame (hip centre origin, x front, y up, z lateral),
    twisted about the long (y) axis by ``twist_deg``.

    Rows: 0 hipL 1 hipR 2 kneeL 3 kneeR 4 ankleL 5 ankleR 6 toeL 7 toeR 8 waist 9 chest
    10 shoulderL 11 shoulderR 12 elbowL 13 elbowR 14 wristL 15 wristR 16 handL 17 handR 18 head.
    """
    hf, kf, split, arm, elbow = np.radians(pose)
    sep = math.radians(arm_sep_deg)
    pts = np.zeros((19, 3))
    for i, (side, z) in enumerate(((+1, 0.09), (-1, -0.09))):
        a_th = hf + side * split / 2
        a_sh = a_th - kf
        hip = np.array([0.0, 0.0, z])
        knee = hip + 0.45 * np.array([math.sin(a_th), -math.cos(a_th), 0.0])
        ankle = knee + 0.44 * np.array([math.sin(a_sh), -math.cos(a_sh), 0.0])
        toe = ankle + 0.15 * np.array([math.sin(a_sh), -math.cos(a_sh), 0.0])  # pointed toes
        pts[0 + i], pts[2 + i], pts[4 + i], pts[6 + i] = hip, knee, ankle, toe
        a_ua = arm + side * sep
        a_fa = a_ua + elbow
        sh = np.array([0.0, 0.47, 1.9 * z])
        el = sh + 0.30 * np.array([math.sin(a_ua), math.cos(a_ua), 0.0])
        wr = el + 0.27 * np.array([math.sin(a_fa), math.cos(a_fa), 0.0])
        hd = wr + 0.08 * np.array([math.sin(a_fa), math.cos(a_fa), 0.0])
        pts[10 + i], pts[12 + i], pts[14 + i], pts[16 + i] = sh, el, wr, hd
    pts[8] = (0.0, 0.24, 0.0)
    pts[9] = (0.0, 0.50, 0.0)
    pts[18] = (0.03, 0.70, 0.0)
    c, s = math.cos(math.radians(twist_deg)), math.sin(math.radians(twist_deg))
    x, z = pts[:, 0].copy(), pts[:, 2].copy()
    pts[:, 0] = c * x + s * z
    pts[:, 2] = -s * x + c * z
    return pts


def _mass_points(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    centres = np.stack(
        [
            (pts[0] + pts[1] + 2 * pts[9]) / 4,  # trunk
            pts[18],
            (pts[0] + pts[2]) / 2,
            (pts[1] + pts[3]) / 2,
            (pts[2] + pts[4]) / 2,
            (pts[3] + pts[5]) / 2,
            (pts[10] + pts[14]) / 2,
            (pts[11] + pts[15]) / 2,
        ]
    )
    m = np.array([_MASS["trunk"], _MASS["head"], _MASS["thigh"], _MASS["thigh"], _MASS["shin"],
                  _MASS["shin"], _MASS["arm"], _MASS["arm"]])
    return centres, m / m.sum()


def centre_of_mass(pts: np.ndarray) -> np.ndarray:
    c, m = _mass_points(pts)
    return (c * m[:, None]).sum(0)


def moment_of_inertia(pts: np.ndarray) -> float:
    """Moment of inertia about the lateral axis through the centre of mass (point masses, + a
    constant for the segments' own extent so a ball-shaped tuck is not a point)."""
    c, m = _mass_points(pts)
    d = c[:, :2] - (c[:, :2] * m[:, None]).sum(0)
    return float((m * (d**2).sum(1)).sum() + 0.02)


# --------------------------------------------------------------------------------------------
# Trajectory
# --------------------------------------------------------------------------------------------


def _smooth(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _blend(a: np.ndarray, b: np.ndarray, u: float) -> np.ndarray:
    return a + (b - a) * float(_smooth(np.array(u)))


@dataclass
class Trajectory:
    """Per-frame state: pose (T,5), twist (T,), somersault angle (T,) degrees, COM (T,2) metres,
    board tip deflection (T,), entry time (s) and point, and flags."""

    t: np.ndarray
    pose: np.ndarray
    twist: np.ndarray
    theta: np.ndarray
    com: np.ndarray
    board_dip: np.ndarray
    t_entry: float
    x_entry: float
    facing: float
    spin: float


def _standing_com(pose: np.ndarray, facing: float, board_y: float, dip: float) -> np.ndarray:
    """World COM of a diver standing (soles on the board, feet 0.15 m behind the tip)."""
    pts = body_points(pose, 0.0)
    c = centre_of_mass(pts)
    foot = (pts[4] + pts[5]) / 2
    return np.array([-0.15 + facing * (c[0] - foot[0]), board_y - dip + (c[1] - foot[1]) + 0.04])


def dive_trajectory(spec: DiveSpec, event: Event, n_frames: int) -> Trajectory:
    """Physical timeline of one dive sampled at ``n_frames`` over the 4.12 s clip."""
    f = spec.factors
    t = np.arange(n_frames) * (CLIP_SECONDS / n_frames)
    facing = 1.0 if spec.group in (1, 3) else -1.0  # forward/reverse face the water (+x)
    spin = 1.0 if spec.group in (1, 2) else -1.0  # head travels to +x (away from the board)
    h = event.height_m
    if event.springboard:
        vy = 4.2 + 2.0 * f["jump"]
    else:
        vy = 2.0 + 1.8 * f["jump"]
    vx = 0.95 * (1.0 + 0.6 * f["distance"])
    # Entry lands at 3.1 s (+-0.15) of the 4.12 s clip, as in MTL-AQA's trimmed clips whose last
    # second shows the entry and splash; take-off time follows from the flight time.
    # Fingertips touch the water with the COM about 1.05 m above it (straight, arms overhead).
    y_take = _standing_com(TAKEOFF, facing, h, 0.0)[1] + 0.05  # toes leave the board
    y_entry = 1.05 * math.cos(math.radians(min(abs(f["rotation_error_deg"]), 80)))
    tf = (vy + math.sqrt(vy * vy + 2 * G * (y_take - y_entry))) / G
    t0 = max(0.8, 3.1 + spec.takeoff_s - tf)
    t_entry = t0 + tf
    pos_pose = position_pose(spec.position, f["tightness"])
    ent_pose = entry_pose(f["line"], spec.split_sign)
    u_kick = 0.74 + 0.1 * f["timing"] if spec.n_half > 1 else 0.3
    u_in = 0.12

    def flight_pose(u: float) -> np.ndarray:
        if u < u_in:
            return _blend(TAKEOFF, pos_pose, u / u_in)
        if u < u_kick:
            return pos_pose
        return _blend(pos_pose, ent_pose, (u - u_kick) / 0.1)

    twist_total = 180.0 * spec.n_half_twists

    def twist_at(u: float) -> float:
        return twist_total * float(_smooth(np.array((u - 0.08) / max(u_kick - 0.12, 0.1))))

    # Somersault angle: omega ~ 1 / I(pose), integrated on a fine grid and scaled so the body
    # reaches n_half * 180 + error at entry (10 degrees of lean are already there at take-off).
    lean = 10.0
    total = 180.0 * spec.n_half + f["rotation_error_deg"]
    grid = np.linspace(0.0, 1.0, 201)
    inv_i = np.array([1.0 / moment_of_inertia(body_points(flight_pose(u), twist_at(u))) for u in grid])
    cum = np.concatenate([[0.0], np.cumsum((inv_i[1:] + inv_i[:-1]) / 2)])
    cum /= cum[-1]

    pose = np.zeros((n_frames, 5))
    twist = np.zeros(n_frames)
    theta = np.zeros(n_frames)
    com = np.zeros((n_frames, 2))
    dip = np.zeros(n_frames)
    # feet stand 0.15 m behind the tip; the take-off COM is where the standing model puts it
    x_take, _ = _standing_com(TAKEOFF, facing, h, 0.0)
    ang_e = math.radians(-spin * total)
    axis_e = np.array([-math.sin(ang_e), math.cos(ang_e)])  # body "up" (towards the head) at entry
    com_e = np.array([x_take + vx * tf, y_entry])
    v_e = math.hypot(vx, vy - G * tf)
    for i, ti in enumerate(t):
        if ti < t0:
            r = ti - t0  # negative
            if r < -0.75:
                p = STAND.copy()
                p[3] += 4 * math.sin(2.1 * ti + spec.seed % 7)
            elif r < -0.45:
                p = _blend(STAND, ARMS_UP, (r + 0.75) / 0.3)
            elif r < -0.2:
                p = _blend(ARMS_UP, CROUCH, (r + 0.45) / 0.25)
            else:
                p = _blend(CROUCH, TAKEOFF, (r + 0.2) / 0.2)
            pose[i] = p
            theta[i] = lean * float(_smooth(np.array((r + 0.25) / 0.25)))
            if event.springboard:
                dip[i] = 0.28 * math.sin(math.pi * float(np.clip((r + 0.45) / 0.45, 0, 1)))
            com[i] = _standing_com(p, facing, h, dip[i])
            com[i, 1] += y_take - _standing_com(TAKEOFF, facing, h, 0.0)[1]
        elif ti < t_entry:
            tau = ti - t0
            u = tau / tf
            pose[i] = flight_pose(u)
            twist[i] = twist_at(u)
            theta[i] = lean + (total - lean) * float(np.interp(u, grid, cum))
            com[i] = (x_take + vx * tau, y_take + vy * tau - 0.5 * G * tau * tau)
            if event.springboard and tau < 0.5:  # the board oscillates after release
                dip[i] = -0.12 * math.sin(2 * math.pi * tau / 0.5) * math.exp(-3 * tau)
        else:
            tau = ti - t_entry
            pose[i] = ent_pose
            twist[i] = twist_total
            theta[i] = total
            # continue head first along the body axis, braking in water (time constant 0.25 s)
            com[i] = com_e + axis_e * v_e * 0.25 * (1 - math.exp(-tau / 0.25))
    # the hands go in ~1.05 m from the COM along the body axis
    x_entry = float(com_e[0] + 1.05 * axis_e[0])
    return Trajectory(t, pose, twist, theta, com, dip, t_entry, x_entry, facing, spin)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _rgb(c: tuple[float, float, float] | np.ndarray) -> np.ndarray:
    return np.asarray(c, dtype=np.float32) * 255.0


def render_background(event: Event, px_per_m: float) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Static scene as a uint8 image covering world x in [-8, 11] m, y in [-4, h + 9] m.

    Returns the image and its world extent (x0, x1, y0, y1). Rendered once per event at
    ``px_per_m`` (above the camera's maximum so per-frame resampling only ever shrinks).
    """
    rng = np.random.default_rng(event.seed)
    x0, x1, y0, y1 = -8.0, 11.0, -4.0, event.height_m + 9.0
    w, hgt = int((x1 - x0) * px_per_m), int((y1 - y0) * px_per_m)
    ys = y1 - (np.arange(hgt) + 0.5) / px_per_m  # world y of each row
    xs = x0 + (np.arange(w) + 0.5) / px_per_m
    img = np.zeros((hgt, w, 3), np.float32)
    # sky: gradient by height, soft clouds
    k = np.clip((ys - 3.0) / (y1 - 3.0), 0, 1)[:, None, None]
    img[:] = _rgb(event.sky_bottom) * (1 - k) + _rgb(event.sky_top) * k
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    for _ in range(6):
        cx, cy = rng.uniform(x0, x1), rng.uniform(6, y1)
        rx, ry = rng.uniform(1.0, 3.0), rng.uniform(0.3, 0.7)
        a = np.exp(-(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) * 2.0)[..., None] * 0.6
        img[:] = img * (1 - a) + 245.0 * a
    # building facade behind the pool (0.6..5.5 m) with windows
    fac = (ys > 0.6) & (ys < 5.5)
    img[fac] = _rgb(event.facade)
    win = fac[:, None] & (np.mod(xx, 1.3) < 0.6) & (np.mod(yy, 1.2) < 0.5) & (yy > 2.6)
    img[win] = _rgb(event.facade) * 0.55
    # crowd (0.6..2.4 m): random coloured heads
    n = int((x1 - x0) * 30)  # heads per row x 4
    r_px = 0.12 * px_per_m
    for row in np.arange(0.8, 2.3, 0.35):
        for cx in rng.uniform(x0, x1, n // 4):
            col = (0.6 * rng.uniform(0.15, 0.9, 3) + 0.4 * rng.uniform(0.2, 0.7)) * 255
            ci, cj = (y1 - row) * px_per_m, (cx - x0) * px_per_m  # row, column of the head centre
            i0, i1 = max(int(ci - r_px), 0), min(int(ci + r_px) + 2, hgt)
            j0, j1 = max(int(cj - r_px), 0), min(int(cj + r_px) + 2, w)
            ii, jj = np.mgrid[i0:i1, j0:j1]
            m = (ii + 0.5 - ci) ** 2 + (jj + 0.5 - cj) ** 2 < r_px**2
            img[i0:i1, j0:j1][m] = col
    # pool deck strip
    deck = (ys >= 0.0) & (ys < 0.6)
    img[deck] = np.array([200, 200, 195], np.float32)
    # water with depth gradient and lane ropes
    wat = ys < 0.0
    depth = np.clip(-ys / 4.0, 0, 1)[wat][:, None, None]
    img[wat] = _rgb(event.water) * (1 - 0.5 * depth) + 0.0
    for ry_, colr in ((-0.5, (0.9, 0.2, 0.2)), (-1.3, (0.95, 0.95, 0.95)), (-2.4, (0.9, 0.8, 0.1))):
        lane = (np.abs(yy - ry_) < 0.05 + 0.02 * ry_ / -2.4) & (np.mod(xx, 0.5) < 0.3)
        img[lane] = _rgb(colr)
    # tower (concrete, textured), left of the board tip
    tower = (xx < -2.6) & (xx > -5.0) & (yy > 0.0) & (yy < event.height_m + 0.3)
    tex = rng.normal(0, 8, (hgt, w)).astype(np.float32)
    tex = gaussian_filter(tex, 1.5)
    img[tower] = _rgb(event.tower) + tex[tower][:, None]
    if event.springboard:
        # board itself is drawn per frame (it flexes); here the stand and the 1 m board
        stand = (xx > -3.2) & (xx < -2.6) & (yy > 0.0) & (yy < event.height_m - 0.1)
        img[stand] = _rgb(event.tower) * 0.8
        low = (xx > -4.5) & (xx < -0.5) & (np.abs(yy - 1.0) < 0.05)
        img[low] = np.array([235, 235, 235], np.float32)
    else:
        for lvl, tip in ((event.height_m, 0.0), (7.5, -1.2), (5.0, -1.6), (3.0, -2.0)):
            slab = (xx > -5.0) & (xx < tip) & (yy > lvl - 0.3) & (yy <= lvl)
            img[slab] = _rgb(event.tower) * 1.1 + tex[slab][:, None]
            edge = (xx > -5.0) & (xx < tip) & (yy > lvl - 0.06) & (yy <= lvl)
            img[edge] = np.array([240, 240, 240], np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), (x0, x1, y0, y1)


class Canvas:
    """A float32 frame with anti-aliased capsules and ellipses (signed distance, 1 px ramp)."""

    def __init__(self, img: np.ndarray):
        self.img = img.astype(np.float32)
        self.h, self.w = img.shape[:2]

    def capsules(self, a: np.ndarray, b: np.ndarray, ra: np.ndarray, rb: np.ndarray,
                 colors: np.ndarray, alpha: np.ndarray | None = None) -> None:
        """Draw capsules (screen px) in the given order (first = farthest), vectorised over one
        bounding box: coverage = clip(r - d + 0.5, 0, 1) with d the distance to the segment and
        r interpolated along it; then front-to-back transmittance composition."""
        n = len(a)
        if n == 0:
            return
        lo = np.floor(np.minimum(a, b) - np.maximum(ra, rb)[:, None] - 1).min(0).astype(int)
        hi = np.ceil(np.maximum(a, b) + np.maximum(ra, rb)[:, None] + 1).max(0).astype(int)
        x0, y0 = max(lo[0], 0), max(lo[1], 0)
        x1, y1 = min(hi[0], self.w), min(hi[1], self.h)
        if x1 <= x0 or y1 <= y0:
            return
        px = np.arange(x0, x1, dtype=np.float32) + 0.5
        py = np.arange(y0, y1, dtype=np.float32) + 0.5
        gx, gy = (g.reshape(1, -1) for g in np.meshgrid(px, py))  # (1, N) pixel centres
        a32, b32 = a.astype(np.float32), b.astype(np.float32)
        abx, aby = (b32[:, 0] - a32[:, 0])[:, None], (b32[:, 1] - a32[:, 1])[:, None]
        apx, apy = gx - a32[:, :1], gy - a32[:, 1:]  # (M, N)
        inv = 1.0 / np.maximum(abx * abx + aby * aby, 1e-6)
        tt = np.clip((apx * abx + apy * aby) * inv, 0, 1)
        dx, dy = apx - tt * abx, apy - tt * aby
        d = np.sqrt(dx * dx + dy * dy)
        r = (ra[:, None] + (rb - ra)[:, None] * tt).astype(np.float32)
        cov = np.clip(r - d + 0.5, 0, 1).astype(np.float32)
        if alpha is not None:
            cov *= alpha[:, None]
        self._compose(cov, colors, x0, y0, x1, y1)

    def _compose(self, cov: np.ndarray, colors: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> None:
        # painter's order = front-to-back weights: w_m = c_m * prod_{m' > m} (1 - c_m')
        trans = np.cumprod((1 - cov)[::-1], axis=0)[::-1]  # trans[m] = prod_{m' >= m}
        after = np.concatenate([trans[1:], np.ones((1, cov.shape[1]), np.float32)])
        wts = cov * after
        region = self.img[y0:y1, x0:x1].reshape(-1, 3)
        out = region * trans[0][:, None] + wts.T @ colors.astype(np.float32)
        self.img[y0:y1, x0:x1] = out.reshape(y1 - y0, x1 - x0, 3)

    def ellipses(self, c: np.ndarray, rx: np.ndarray, ry: np.ndarray, colors: np.ndarray,
                 alpha: np.ndarray, ring: np.ndarray | None = None) -> None:
        """Filled (or, where ``ring`` > 0, outline of that width in px) axis-aligned ellipses."""
        for i in range(len(c)):
            x0 = max(int(c[i, 0] - rx[i] - 2), 0)
            x1 = min(int(c[i, 0] + rx[i] + 3), self.w)
            y0 = max(int(c[i, 1] - ry[i] - 2), 0)
            y1 = min(int(c[i, 1] + ry[i] + 3), self.h)
            if x1 <= x0 or y1 <= y0 or alpha[i] <= 0:
                continue
            px = (np.arange(x0, x1, dtype=np.float32) + 0.5 - c[i, 0])[None, :]
            py = (np.arange(y0, y1, dtype=np.float32) + 0.5 - c[i, 1])[:, None]
            q = np.sqrt((px / max(rx[i], 0.5)) ** 2 + (py / max(ry[i], 0.5)) ** 2)
            sd = (1 - q) * min(rx[i], ry[i])  # approx. signed distance in px, + inside
            if ring is not None and ring[i] > 0:
                cov = np.clip(ring[i] / 2 - np.abs(sd) + 0.5, 0, 1)
            else:
                cov = np.clip(sd + 0.5, 0, 1)
            cov = (cov * alpha[i]).astype(np.float32)[..., None]
            reg = self.img[y0:y1, x0:x1]
            self.img[y0:y1, x0:x1] = reg * (1 - cov) + colors[i].astype(np.float32) * cov

    def spray(self, pts: np.ndarray, strength: np.ndarray, sigma: float, color: np.ndarray) -> None:
        """Droplets: bilinear splats into a density map, Gaussian-blurred, composited as alpha."""
        if len(pts) == 0:
            return
        pad = int(3 * sigma + 2)
        lo = np.floor(pts.min(0)).astype(int) - pad
        hi = np.ceil(pts.max(0)).astype(int) + pad
        x0, y0 = max(lo[0], 0), max(lo[1], 0)
        x1, y1 = min(hi[0], self.w), min(hi[1], self.h)
        if x1 <= x0 or y1 <= y0:
            return
        dens = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.float32)
        p = pts - np.array([x0, y0]) - 0.5
        ok = (p[:, 0] >= 0) & (p[:, 1] >= 0) & (p[:, 0] < x1 - x0 - 1) & (p[:, 1] < y1 - y0 - 1)
        p, s = p[ok], strength[ok]
        i0 = np.floor(p).astype(int)
        fr = p - i0
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
            wgt = (fr[:, 0] if dx else 1 - fr[:, 0]) * (fr[:, 1] if dy else 1 - fr[:, 1])
            np.add.at(dens, (i0[:, 1] + dy, i0[:, 0] + dx), wgt * s)
        dens = gaussian_filter(dens, sigma)[: y1 - y0, : x1 - x0]
        a = np.clip(dens * (2 * math.pi * sigma * sigma) * 0.9, 0, 1)[..., None]
        reg = self.img[y0:y1, x0:x1]
        self.img[y0:y1, x0:x1] = reg * (1 - a) + color.astype(np.float32) * a

    def to_uint8(self) -> np.ndarray:
        return np.clip(self.img + 0.5, 0, 255).astype(np.uint8)


# capsule list: (from joint, to joint, radius from, radius to, colour key)
_SEGMENTS = [
    (0, 2, 0.075, 0.06, "skin"), (2, 4, 0.055, 0.042, "skin"), (4, 6, 0.035, 0.025, "skin"),
    (1, 3, 0.075, 0.06, "skin"), (3, 5, 0.055, 0.042, "skin"), (5, 7, 0.035, 0.025, "skin"),
    (10, 12, 0.048, 0.042, "skin"), (12, 14, 0.04, 0.033, "skin"), (14, 16, 0.032, 0.028, "skin"),
    (11, 13, 0.048, 0.042, "skin"), (13, 15, 0.04, 0.033, "skin"), (15, 17, 0.032, 0.028, "skin"),
]
# left-side segment indices: their depth is that of the left hip/shoulder
_LEFT = {0, 1, 2, 6, 7, 8}


def _diver_capsules(spec: DiveSpec, pts3: np.ndarray, twist: float) -> tuple[list, np.ndarray]:
    """Capsules (3-D body frame) of the diver, sorted far to near by depth (z)."""
    skin, suit, hair = _rgb(spec.skin), _rgb(spec.suit), _rgb(spec.hair)
    caps = []
    for k, (i, j, r0, r1, _) in enumerate(_SEGMENTS):
        depth = (pts3[i, 2] + pts3[j, 2]) / 2
        shade = 0.78 if depth < -0.03 else 1.0
        caps.append((depth, pts3[i, :2], pts3[j, :2], r0, r1, skin * shade))
    # trunk: cross-section 0.22 deep x 0.34 wide -> projected half-width depends on twist
    c, s = math.cos(math.radians(twist)), math.sin(math.radians(twist))
    rt = math.hypot(0.11 * c, 0.165 * s)
    hipc = (pts3[0, :2] + pts3[1, :2]) / 2
    # front of the suit is lighter, back darker: the twist is visible as a colour change
    suit_face = np.clip(suit * (1.0 + 0.3 * s) + 20.0 * s, 0, 255)
    caps.append((0.0, hipc, pts3[8, :2], rt * 0.95, rt * 0.9, suit_face))
    caps.append((0.001, pts3[8, :2], pts3[9, :2], rt * 0.9, rt, skin))
    caps.append((0.002, pts3[9, :2], pts3[18, :2] * 0.6 + pts3[9, :2] * 0.4, 0.05, 0.05, skin))
    back = pts3[18, :2] + np.array([-0.045 * c, 0.035])
    caps.append((0.003, back, back, 0.09, 0.09, hair))
    caps.append((0.004, pts3[18, :2], pts3[18, :2], 0.105, 0.105, skin))
    caps.sort(key=lambda x: x[0])
    return caps, rt


def render_dive(spec: DiveSpec, event: Event, n_frames: int, size: tuple[int, int],
                background: tuple[np.ndarray, tuple[float, float, float, float]] | None = None) -> list[np.ndarray]:
    """Render the dive as ``n_frames`` uint8 RGB frames of ``size = (width, height)``."""
    width, height = size
    scale = height / 240.0
    ppm0 = event.ppm * scale
    bg_ppm = ppm0 * 1.25
    if background is None:
        background = render_background(event, bg_ppm)
    bg_img, (bx0, bx1, by0, by1) = background
    bg = Image.fromarray(bg_img)
    bg_ppm = bg_img.shape[0] / (by1 - by0)
    tr = dive_trajectory(spec, event, n_frames)
    rng = np.random.default_rng(spec.seed)

    # camera: track the COM with a short look-ahead, exponential lag, keep the water in view at
    # the end (surface no lower than 78% of the frame height), pan a third of the horizontal motion
    ppm = ppm0 * (1 + event.zoom_rate * tr.t)
    look = np.interp(tr.t + 0.12, tr.t, tr.com[:, 1])
    y_min = (0.78 * height - height / 2) / ppm
    target = np.maximum(look, y_min)
    cam_y = np.zeros(n_frames)
    cam_y[0] = target[0]
    a_lag = 1 - math.exp(-(CLIP_SECONDS / n_frames) / 0.09)
    for i in range(1, n_frames):
        cam_y[i] = cam_y[i - 1] + a_lag * (target[i] - cam_y[i - 1])
    cam_y = np.maximum(cam_y, y_min)
    cam_x = event.cam_x0 + 0.35 * (tr.com[:, 0] - event.cam_x0)

    # splash particles (world metres), launched over the first ~0.1-0.3 s after entry
    S = spec.factors["splash"]
    n_p = int(25 + 140 * S)
    launch = rng.uniform(0.0, 0.08 + 0.1 * S, n_p)
    px0 = tr.x_entry + rng.normal(0.0, 0.1 + 0.08 * S, n_p)
    over = spec.factors["rotation_error_deg"] / 50.0 * tr.spin
    pvx = rng.normal(0.4 * over, 0.35 + 0.35 * S, n_p)
    pvy = rng.uniform(0.6, 1.8 + 2.6 * math.sqrt(S), n_p)
    psz = rng.uniform(0.6, 1.3, n_p)

    frames = []
    for i in range(n_frames):
        ti = tr.t[i]
        z = ppm[i]
        vw, vh = width / z, height / z
        # keep the view inside the pre-rendered scene
        wx0 = float(np.clip(cam_x[i] - vw / 2, bx0, bx1 - vw))
        wy1 = float(np.clip(cam_y[i] + vh / 2, by0 + vh, by1))
        box = ((wx0 - bx0) * bg_ppm, (by1 - wy1) * bg_ppm,
               (wx0 + vw - bx0) * bg_ppm, (by1 - wy1 + vh) * bg_ppm)
        frame = np.asarray(bg.resize((width, height), Image.BILINEAR, box=box))
        cv = Canvas(frame)

        def to_px(p: np.ndarray) -> np.ndarray:
            return np.stack([(p[..., 0] - wx0) * z, (wy1 - p[..., 1]) * z], -1)

        # water shimmer: travelling highlights on the visible water rows
        y_s = int(np.clip((wy1 - 0.0) * z, 0, height))
        if y_s < height:
            rows = np.arange(y_s, height, dtype=np.float32)[:, None]
            cols = np.arange(width, dtype=np.float32)[None, :]
            dep = (rows - y_s) / z + 0.3
            wave = np.sin(cols / (6 * scale) * (1 + 0.3 / dep) + ti * 3.0 + rows * 0.7 / scale)
            cv.img[y_s:height] += (10.0 * wave * np.exp(-dep / 2.5))[..., None]

        # springboard (flexes at the tip)
        if event.springboard:
            hb = event.height_m
            a = to_px(np.array([[-4.6, hb - 0.04], [-1.8, hb - 0.04 - 0.2 * tr.board_dip[i]]]))
            b = to_px(np.array([[-1.8, hb - 0.04 - 0.2 * tr.board_dip[i]], [0.05, hb - 0.04 - tr.board_dip[i]]]))
            cv.capsules(a, b, np.full(2, 0.05 * z), np.full(2, 0.05 * z),
                        np.array([[238, 238, 232], [238, 238, 232]], np.float32))

        # diver
        pts3 = body_points(tr.pose[i], tr.twist[i], spec.arm_sep_deg)
        com_b = centre_of_mass(pts3)
        caps, _ = _diver_capsules(spec, pts3, tr.twist[i])
        ang = math.radians(-tr.spin * tr.theta[i])
        ca, sa = math.cos(ang), math.sin(ang)

        def world(p2: np.ndarray) -> np.ndarray:
            q = p2 - com_b[:2]
            x = tr.facing * q[..., 0]
            return np.stack([x * ca - q[..., 1] * sa, x * sa + q[..., 1] * ca], -1) + tr.com[i]

        A = world(np.array([c[1] for c in caps]))
        B = world(np.array([c[2] for c in caps]))
        cols = np.array([c[5] for c in caps], np.float32)
        # under water: faint and blue-tinted, judged by the segment's midpoint depth
        mid_y = (A[:, 1] + B[:, 1]) / 2
        alpha = np.where(mid_y < 0.0, np.clip(0.35 + mid_y * 0.4, 0.0, 0.35), 1.0).astype(np.float32)
        if alpha.max() > 0:
            cols = np.where((mid_y < 0.0)[:, None], cols * 0.5 + _rgb(event.water) * 0.5, cols)
            r0 = np.array([c[3] for c in caps]) * z
            r1 = np.array([c[4] for c in caps]) * z
            cv.capsules(to_px(A), to_px(B), r0, r1, cols, alpha)

        # splash
        tau = ti - tr.t_entry
        if tau > 0:
            white = np.array([[245, 248, 250]], np.float32)
            # foam patch on the surface: widens, fades
            fade = math.exp(-tau / (0.5 + 0.5 * S))
            cx = to_px(np.array([tr.x_entry, 0.0]))
            rx = (0.25 + 0.45 * S) * (1 + 1.5 * tau) * z
            cv.ellipses(cx[None], np.array([rx]), np.array([max(0.12 * z * (0.6 + S), 1.5)]),
                        white, np.array([min(0.95, 0.35 + 0.35 * S) * fade]))
            # expanding ripple ring
            rr = (0.4 + 1.6 * tau) * z
            cv.ellipses(cx[None], np.array([rr]), np.array([rr * 0.12]), white,
                        np.array([0.5 * math.exp(-tau / 0.8)]), ring=np.array([1.2 * scale]))
            # crown / column: rises and collapses
            tc = 0.3 + 0.25 * S
            if tau < tc:
                hc = (0.15 + 1.0 * S) * math.sin(math.pi * tau / tc)
                cc = to_px(np.array([tr.x_entry, hc / 2]))
                cv.ellipses(cc[None], np.array([(0.1 + 0.2 * S) * z]), np.array([max(hc / 2 * z, 1.0)]),
                            white, np.array([0.85]))
            # droplets
            tp = tau - launch
            live = tp > 0
            if live.any():
                tpl = tp[live]
                wx = px0[live] + pvx[live] * tpl
                wy = pvy[live] * tpl - 0.5 * G * tpl * tpl
                up = wy > -0.05
                if up.any():
                    cv.spray(to_px(np.stack([wx[up], wy[up]], -1)), psz[live][up],
                             sigma=0.9 * scale, color=white[0])
        frames.append(cv.to_uint8())
    return frames


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthConfig:
    """Size and look of a generated set. ``n_dives`` split into videos of ``dives_per_video``."""

    n_dives: int = 72
    seed: int = 0
    n_frames: int = 103
    width: int = 320
    height: int = 240
    dives_per_video: int = 12
    test_fraction: float = 0.3
    jpeg_quality: int = 90

    def keys(self) -> list[tuple[int, int]]:
        return [(k // self.dives_per_video + 1, k % self.dives_per_video + 1) for k in range(self.n_dives)]

    def check(self) -> None:
        if self.n_dives < 2:
            raise ValueError(f"n_dives={self.n_dives}: need at least 2 (one train, one test)")
        if self.n_frames < 16:
            raise ValueError(f"n_frames={self.n_frames}: need at least 16 (one I3D clip)")
        if min(self.width, self.height) < 64:
            raise ValueError(f"frame size {self.width}x{self.height}: the short side must be >= 64 px")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction={self.test_fraction}: must be in (0, 1)")


def split_keys(keys: list[tuple[int, int]], test_fraction: float, seed: int) -> tuple[list, list]:
    """Random train/test split of dive keys (at least one of each), sorted within each list."""
    rng = np.random.default_rng(np.random.SeedSequence((seed, 0x5917)))
    order = rng.permutation(len(keys))
    n_test = min(max(1, int(round(len(keys) * test_fraction))), len(keys) - 1)
    test = sorted(keys[i] for i in order[:n_test])
    train = sorted(keys[i] for i in order[n_test:])
    return train, test


def _annotation(spec: DiveSpec, judges: np.ndarray, dd: int, n_frames: int) -> dict:
    start = 1000 * dd + 17  # frame numbers in the (imaginary) untrimmed source video
    return {
        "primary_view": 0,
        "start_frame": start,
        "end_frame": start + n_frames - 1,
        "position": POSITION_CODE[spec.position],
        "difficulty": np.float64(spec.difficulty),
        "armstand": 0,
        "rotation_type": spec.group,
        "ss_no": spec.n_half,
        "tw_no": spec.n_half_twists,
        "final_score": np.float64(mtl_final_score(judges, spec.difficulty)),
        "judge_scores": judges.astype(np.float64),
        "dive_number": spec.dive_number,
    }


def _render_one(cfg: SynthConfig, vv: int, dd: int, out: Path, background) -> dict:
    event = draw_event(cfg.seed, vv)
    spec = draw_dive(cfg.seed, vv, dd, event)
    frames = render_dive(spec, event, cfg.n_frames, (cfg.width, cfg.height), background)
    d = out / "frames" / f"{vv:02d}_{dd:02d}"
    d.mkdir(parents=True, exist_ok=True)
    for k, f in enumerate(frames):
        Image.fromarray(f).save(d / f"{k:05d}.jpg", quality=cfg.jpeg_quality)
    return {"key": [vv, dd], "dive_number": spec.dive_number, "difficulty": spec.difficulty,
            "position": spec.position, "factors": spec.factors, "height_m": event.height_m}


def _render_video(cfg: SynthConfig, vv: int, dds: list[int], out: str) -> list[dict]:
    event = draw_event(cfg.seed, vv)
    bg = render_background(event, event.ppm * cfg.height / 240.0 * 1.25)
    return [_render_one(cfg, vv, dd, Path(out), bg) for dd in dds]


def read_stamp(out: str | Path) -> dict | None:
    """The ``info/synth.json`` of a complete generated set, or None."""
    p = Path(out) / "info" / "synth.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_complete(out: str | Path, cfg: SynthConfig) -> bool:
    """True if ``out`` holds a set generated by this generator version with this exact config."""
    stamp = read_stamp(out)
    return bool(stamp and stamp.get("version") == GENERATOR_VERSION and stamp.get("config") == asdict(cfg))


def generate(out: str | Path, cfg: SynthConfig = SynthConfig(), *, workers: int | None = None,
             reuse: bool = True) -> dict[str, Any]:
    """Generate the dataset under ``out`` (see module docstring); return a summary dict.

    With ``reuse`` and a complete set of the same version and config already there, nothing is
    written and the summary says ``reused: True``. Otherwise ``frames/`` and ``info/`` are
    replaced. Rendering is parallel over source videos (``workers`` processes, default
    min(4, cpu count)); results do not depend on the number of workers.
    """
    cfg.check()
    out = Path(out)
    if reuse and is_complete(out, cfg):
        return {"path": str(out), "reused": True, **read_stamp(out)["summary"]}
    t_start = time.perf_counter()
    for sub in ("frames", "info"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    (out / "info").mkdir(parents=True, exist_ok=True)
    keys = cfg.keys()
    by_video: dict[int, list[int]] = {}
    for vv, dd in keys:
        by_video.setdefault(vv, []).append(dd)
    workers = workers or min(4, os.cpu_count() or 1)
    if workers > 1 and len(by_video) > 1:
        from joblib import Parallel, delayed

        chunks = Parallel(n_jobs=min(workers, len(by_video)))(
            delayed(_render_video)(cfg, vv, dds, str(out)) for vv, dds in by_video.items()
        )
    else:
        chunks = [_render_video(cfg, vv, dds, str(out)) for vv, dds in by_video.items()]
    meta = {tuple(m["key"]): m for chunk in chunks for m in chunk}

    panel = JudgePanel.draw(cfg.seed)
    annotations = {}
    for vv, dd in keys:
        event = draw_event(cfg.seed, vv)
        spec = draw_dive(cfg.seed, vv, dd, event)
        jrng = np.random.default_rng(np.random.SeedSequence((cfg.seed, vv, dd, 0x1D6E)))
        judges = panel.score(spec.factors, jrng)
        annotations[(vv, dd)] = _annotation(spec, judges, dd, cfg.n_frames)
        meta[(vv, dd)]["judge_scores"] = judges.tolist()
        meta[(vv, dd)]["final_score"] = float(annotations[(vv, dd)]["final_score"])
    train, test = split_keys(keys, cfg.test_fraction, cfg.seed)
    # protocol 2: what the published (Python 2 era) MTL-AQA pickles use
    with open(out / "info" / ANNOTATION_FILE, "wb") as f:
        pickle.dump(annotations, f, protocol=2)
    for name, split in (("train_split_0.pkl", train), ("test_split_0.pkl", test)):
        with open(out / "info" / name, "wb") as f:
            pickle.dump(split, f, protocol=2)
    finals = np.array([float(a["final_score"]) for a in annotations.values()])
    summary = {
        "n_dives": len(keys),
        "n_train": len(train),
        "n_test": len(test),
        "final_score_range": [float(finals.min()), float(finals.max())],
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    stamp = {
        "version": GENERATOR_VERSION,
        "config": asdict(cfg),
        "summary": summary,
        "judges": {"bias": panel.bias.tolist(), "noise": panel.noise.tolist(),
                   "weights": panel.weights.tolist(), "penalties": list(PENALTY_WEIGHTS)},
        "dives": [meta[k] for k in keys],
    }
    (out / "info" / "synth.json").write_text(json.dumps(stamp, indent=1))
    return {"path": str(out), "reused": False, **summary}


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m udaqa_pipeline.synth",
                                 description="Generate the synthetic diving set in the MTL-AQA layout.")
    ap.add_argument("out", help="output folder (frames/ and info/ are created there)")
    d = SynthConfig()
    ap.add_argument("--n", type=int, default=d.n_dives, help="number of dives")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--frames", type=int, default=d.n_frames, help="frames per dive")
    ap.add_argument("--width", type=int, default=d.width)
    ap.add_argument("--height", type=int, default=d.height)
    ap.add_argument("--dives-per-video", type=int, default=d.dives_per_video)
    ap.add_argument("--test-fraction", type=float, default=d.test_fraction)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--force", action="store_true", help="regenerate even if a matching set exists")
    a = ap.parse_args(argv)
    cfg = SynthConfig(n_dives=a.n, seed=a.seed, n_frames=a.frames, width=a.width, height=a.height,
                      dives_per_video=a.dives_per_video, test_fraction=a.test_fraction)
    try:
        res = generate(a.out, cfg, workers=a.workers, reuse=not a.force)
    except ValueError as e:
        ap.error(str(e))
    what = "reused existing" if res["reused"] else f"generated in {res['seconds']} s"
    print(f"{res['path']}: {res['n_dives']} dives ({res['n_train']} train / {res['n_test']} test), "
          f"final scores {res['final_score_range'][0]:.1f}..{res['final_score_range'][1]:.1f}, {what}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
