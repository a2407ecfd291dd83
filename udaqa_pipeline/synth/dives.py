"""What is dived: the scene of each source video (:class:`Event`) and each dive's type, degree of
difficulty and quality factors (:class:`DiveSpec`), drawn from the seed alone.

* **Difficulty.** Dive group (forward/back/reverse/inward, rotation direction and facing follow
  from it), half somersaults (1, 3, 5, 7, 9), half twists (0..5) and position (straight/pike/tuck/
  free) give a dive number like ``'107B'`` / ``'5253B'`` and a degree of difficulty by an additive
  approximation of the FINA table, clipped to MTL-AQA's 1.5..4.1.
* **Quality.** Seven factors a judge sees, each in [0, 1] (1 = perfect) and each driven by one
  latent diver skill plus its own noise: jump height, distance from the board, position tightness,
  rotation completed (entry angle error in degrees), body line at entry (knees, pike, split legs),
  entry technique (rip) and kick-out timing. Splash size is a function of the entry (angle, line,
  rip, timing), not an independent draw, so what the judges penalise is what the frames show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

GROUPS = {1: "forward", 2: "back", 3: "reverse", 4: "inward"}
POSITION_LETTER = {"straight": "A", "pike": "B", "tuck": "C", "free": "D"}
#: MTL-AQA's integer codes are not documented with the release; these follow the letter order.
POSITION_CODE = {"straight": 1, "pike": 2, "tuck": 3, "free": 4}


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
    factors: dict[str, float]  # quality factors, see judges.penalties()
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
