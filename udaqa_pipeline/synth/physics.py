"""The diver's body and its flight: a jointed figure posed by five angles, and the physical
timeline of a dive (stand, arm swing, crouch, take-off, ballistic flight of the centre of mass,
somersaults at an angular velocity inversely proportional to the pose's moment of inertia, twists,
kick-out, entry). No pixels here; :mod:`.render` draws what this computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .dives import DiveSpec, Event

G = 9.81
#: Broadcast frame rate; 103 frames at 25 fps = 4.12 s, the MTL-AQA trimmed clip length.
FPS = 25.0
CLIP_SECONDS = 103 / FPS


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
