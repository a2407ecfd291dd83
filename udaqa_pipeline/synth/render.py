"""Pixels: the static scene of an event, an anti-aliased canvas, and a dive's frames.

The 3-D figure of :mod:`.physics` (17 capsules) is twisted about its long axis, seen from the side
(orthographic), mirrored by the facing direction and rotated about its centre of mass. Capsules
are drawn as signed-distance fields with one-pixel coverage ramps, so edges are anti-aliased
without supersampling; painter's order by depth, far-side limbs shaded. The splash (particle
spray, crown, foam, ripple ring) is sized by the dive's ``splash`` factor. One scene per source
video: 10 m platform or 3 m springboard, sky gradient with clouds, building facade, crowd, tower,
pool with lane ropes and animated shimmer; the camera tracks the diver vertically with lag, pans
slightly and zooms slowly.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from .dives import DiveSpec, Event
from .physics import CLIP_SECONDS, G, body_points, centre_of_mass, dive_trajectory


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
