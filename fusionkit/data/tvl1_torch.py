"""TV-L1 optical flow in PyTorch, batched: many frame pairs in one call, on CUDA or the CPU.

TV-L1 (Zach, Pock & Bischof, "A Duality Based Approach for Realtime TV-L1 Optical Flow", DAGM 2007)
finds the flow u = (u1, u2) that minimises

    E(u) = sum_x |grad u1| + |grad u2| + lambda |I1(x + u(x)) - I0(x)|:

total variation keeps the flow piecewise smooth with sharp motion edges, and the L1 data term
shrugs off occlusions and outliers. We follow the description of Sánchez Pérez, Meinhardt-Llopis &
Facciolo, "TV-L1 Optical Flow Estimation", IPOL 2013 (doi:10.5201/ipol.2013.26; "IPOL" below) with
the choices of the implementation that descends from theirs, OpenCV's
``cv::optflow::DualTVL1OpticalFlow`` (opencv_contrib, modules/optflow/src/tvl1flow.cpp): its
parameters, defaults and stopping rule. The method, in IPOL's terms:

1. Linearise the data term around the current flow u0 (the first-order Taylor expansion):
   rho(u) = I1(x+u0) + grad I1(x+u0) . (u - u0) - I0(x).
2. Decouple it from the TV term through an auxiliary flow v tied to u by (u - v)^2 / (2 theta), and
   alternate three closed-form steps (the numerical scheme):
   the thresholding step TH    v = u + TH(rho(u)) (a shrinkage along grad I1; see :func:`_step`),
   the primal step             u = v + theta div p,
   the dual step (Chambolle)   p = (p + tau/theta grad u) / (1 + tau/theta |grad u|).
3. Do so coarse to fine on an image pyramid, re-warping I1 by the current flow ``warps`` times per
   scale, and (OpenCV's addition) median-filter the flow before each round of iterations.

Every step is an element-wise or shifted-slice tensor operation, so a stack of N pairs is computed
by the same few thousand kernel calls as one pair: that is where the speed comes from, on a GPU and,
with enough pairs per call, on the CPU (benchmarks/flow_tvl1.py measures it against OpenCV's). On
a CPU that other jobs share, prefer one process per core with one torch thread each to one process
with a thread per core: torch's threads meet at every one of those calls, each meeting waits for the
slowest, and on a loaded 2-core machine the benchmark measured the latter 4 to 8 times slower.

Where this differs from OpenCV, and why:

- Stopping: OpenCV's rule (a warp's iterations end once the mean squared update of u falls below
  epsilon^2, tested after every iteration) is applied to each pair of a batch on its own, so that a
  pair's flow does not depend on the others in its batch. ``check_every=k`` tests only every k-th
  iteration, saving a pass over the data (and, on a GPU, a wait for it) per iteration skipped; a
  pair may then run up to k - 1 iterations more. Measured: k = 3 is ~5% faster on the CPU and moves
  the flow 0.03 px from OpenCV's, against 0.014 px for k = 1, the default.
- Pyramid: as OpenCV's, bilinear resizing by ``scale_step`` without smoothing (IPOL blurs with a
  Gaussian first). Not through ``F.interpolate``, which would sample at the ratio of the rounded
  sizes: that misplaces the far edge of a 112 px frame by half a pixel, and doubled the distance to
  OpenCV's flow (see :func:`_downscale`).
- Warping: bicubic with zeros outside the frame, as OpenCV's remap, through ``grid_sample`` (the same
  a = -0.75 cubic kernel); OpenCV rounds the sample positions to 1/32 px, torch does not. (Replicating
  the border instead, as IPOL does, measured worse on the puzzles: it invents gradients outside.)
  I0 is resampled through the same grid at zero flow (it moves by < 1e-3 grey levels): see
  :func:`_solve_level`.
- The thresholding step is written as one clamp (see :func:`_step`). It equals OpenCV's three
  cases except where |grad I1|^2 < 1.2e-7 (float epsilon), where OpenCV leaves v = u and this
  moves it by at most lambda theta |grad I1| < 2e-5 px.
- The median filter (5x5, replicated border) is OpenCV's own ``cv2.medianBlur`` for tensors on the
  CPU (PyTorch has no fast median: ``torch.median`` over 5x5 patches runs over 100x slower there)
  and ``torch.median`` over the patches elsewhere; the two give identical values.
- Not implemented: OpenCV's ``gamma`` (an illumination-change term; its default 0 disables it) and
  ``useInitialFlow`` (default False).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

DEVICE_ENV = "FUSIONKIT_TVL1_DEVICE"  # e.g. "cpu" or "cuda:1"; default: CUDA when available
MIN_LEVEL_SIZE = 16  # px: OpenCV stops adding pyramid levels before either side drops below this
# Pairs per chunk: enough pixels that a kernel call's overhead is small against its work; on the CPU
# few enough that a chunk's ~20 working tensors stay in the cache (measured: benchmarks/flow_tvl1.py).
PIXELS_PER_CHUNK = {"cpu": 2**18, "cuda": 2**25}


def default_device() -> torch.device:
    """The device named by $FUSIONKIT_TVL1_DEVICE, else CUDA when available, else the CPU."""
    name = os.environ.get(DEVICE_ENV) or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def tvl1_flow(prev, nxt, *, tau: float = 0.25, lambda_: float = 0.15, theta: float = 0.3, nscales: int = 5,
              warps: int = 5, epsilon: float = 0.01, inner_iterations: int = 30, outer_iterations: int = 10,
              scale_step: float = 0.8, median_filtering: int = 5, check_every: int = 1,
              device: str | torch.device | None = None, batch_size: int | None = None) -> np.ndarray:
    """Forward TV-L1 flow from ``prev`` to ``nxt``: grey frames ``[H, W]`` -> ``[H, W, 2]``, or stacks
    ``[N, H, W]`` -> ``[N, H, W, 2]``, float32 (dx, dy) in pixels.

    Frames are uint8 (0..255) or floating point in [0, 1] (as OpenCV reads them), numpy arrays or
    tensors. The parameters and their defaults are OpenCV's DualTVL1OpticalFlow's (``lambda_`` is
    its ``lambda``); ``check_every`` is how often the stopping rule is tested (see the module
    docstring). ``batch_size`` pairs are solved at a time (default: as many as fit
    :data:`PIXELS_PER_CHUNK` for the device); the result does not depend on it.
    """
    prev, nxt = _as_grey_stack(prev, "prev"), _as_grey_stack(nxt, "nxt")
    single = prev.ndim == 2
    if prev.shape != nxt.shape:
        raise ValueError(f"prev and nxt must have the same shape, got {tuple(prev.shape)} and {tuple(nxt.shape)}")
    if single:
        prev, nxt = prev[None], nxt[None]
    if min(prev.shape[1:]) < 2:
        raise ValueError(f"frames must be at least 2x2 pixels, got {tuple(prev.shape[1:])}")
    if median_filtering not in (0, 1, 3, 5):
        raise ValueError(f"median_filtering must be 0 or 1 (off), 3 or 5 (OpenCV's float median sizes), "
                         f"got {median_filtering}")
    if nscales < 1 or warps < 1 or check_every < 1 or not 0 < scale_step < 1:
        raise ValueError(f"need nscales, warps, check_every >= 1 and 0 < scale_step < 1; got nscales={nscales}, "
                         f"warps={warps}, check_every={check_every}, scale_step={scale_step}")
    device = torch.device(device) if device is not None else default_device()
    n, h, w = prev.shape
    if batch_size is None:
        batch_size = max(1, PIXELS_PER_CHUNK.get(device.type, PIXELS_PER_CHUNK["cuda"]) // (h * w))
    solver = dict(tau=tau, lt=lambda_ * theta, taut=tau / theta, warps=warps, epsilon=epsilon,
                  inner=inner_iterations, outer=outer_iterations, median=median_filtering, check_every=check_every)
    out = np.empty((n, h, w, 2), np.float32)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            chunk = slice(start, start + batch_size)
            i0, i1 = (_to_float(x[chunk].to(device)) for x in (prev, nxt))
            out[chunk] = _coarse_to_fine(i0, i1, nscales, scale_step, solver).permute(0, 2, 3, 1).cpu().numpy()
    return out[0] if single else out


def _as_grey_stack(x, name: str) -> torch.Tensor:
    x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    colour = x.ndim == 3 and x.shape[-1] in (3, 4)  # [H, W, 3] (a stack of frames 3 px wide is no use)
    if x.ndim not in (2, 3) or colour:
        raise ValueError(f"{name} must be a grey frame [H, W] or a stack of them [N, H, W], got shape {tuple(x.shape)}"
                         + (": colour? Convert with fusionkit.data.flow.to_grey first" if colour else ""))
    if x.dtype != torch.uint8 and not x.dtype.is_floating_point:
        raise ValueError(f"{name} must be uint8 (0..255) or floating point (0..1), got {x.dtype}")
    return x


def _to_float(x: torch.Tensor) -> torch.Tensor:
    """Grey levels as float32 in 0..255, as OpenCV works on them (it does not normalise the range)."""
    return x.float() if x.dtype == torch.uint8 else x.float() * 255


def _coarse_to_fine(i0: torch.Tensor, i1: torch.Tensor, nscales: int, scale_step: float, solver: dict) -> torch.Tensor:
    """Coarse to fine: solve on the smallest level of an image pyramid first, then on each larger one,
    starting from the smaller level's flow upsampled and scaled by 1 / scale_step (its pixels are
    bigger). The pyramid has ``nscales`` levels or stops before one would be under 16 px, as
    OpenCV's. [N, H, W] pairs -> u [N, 2, H, W]."""
    pyramid = [(i0, i1)]
    for _ in range(1, nscales):
        h, w = (round(s * scale_step) for s in pyramid[-1][0].shape[1:])
        if h < MIN_LEVEL_SIZE or w < MIN_LEVEL_SIZE:
            break
        pyramid.append(tuple(_downscale(x, (h, w), scale_step) for x in pyramid[-1]))
    u = i0.new_zeros(len(i0), 2, *pyramid[-1][0].shape[1:])
    for level, (a, b) in enumerate(reversed(pyramid)):
        if level:
            u = _resize(u, a.shape[1:]) / scale_step
        u = _solve_level(a, b, u, **solver)
    return u


def _downscale(x: torch.Tensor, size: tuple[int, int], step: float) -> torch.Tensor:
    """[N, H, W] -> [N, *size] as OpenCV's resize(fx=fy=step, INTER_LINEAR): output pixel d samples the
    input at (d + 0.5) / step - 0.5, bilinearly, the border replicated (grid_sample's grid, in [-1, 1]
    with align_corners=False, is (2 x + 1) / W - 1 for input position x)."""
    n, h, w = x.shape
    gy = (torch.arange(size[0], device=x.device) + 0.5) * (2 / (step * h)) - 1
    gx = (torch.arange(size[1], device=x.device) + 0.5) * (2 / (step * w)) - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1).expand(n, -1, -1, -1)
    return F.grid_sample(x[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, *size] bilinearly at the ratio of the sizes, as OpenCV's resize(dsize)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _solve_level(i0: torch.Tensor, i1: torch.Tensor, u: torch.Tensor, *, tau: float, lt: float, taut: float,
                 warps: int, epsilon: float, inner: int, outer: int, median: int, check_every: int) -> torch.Tensor:
    """IPOL's algorithm at one scale: ``warps`` times, warp I1 by u and linearise; then up to ``outer``
    rounds of (median filter, up to ``inner`` iterations), until a pair's mean squared update of u
    drops below epsilon^2 (OpenCV's rule). u [N, 2, H, W] is refined and returned."""
    n, h, w = i0.shape
    # p is kept divided by tau/theta: P = p theta / tau. Then the dual step needs no multiplication,
    # P = (P + grad u) / (1 + tau/theta |grad u|), and the primal step is u = v + tau div P.
    p = i0.new_zeros(n, 2, 2, h, w)  # [pair, flow component, x/y, H, W]; zero at each new scale (IPOL, OpenCV)
    i1_and_grad = torch.cat([i1[:, None], _centred_gradient(i1)], 1)  # [N, 3, H, W]
    ys, xs = torch.meshgrid(torch.arange(h, device=u.device), torch.arange(w, device=u.device), indexing="ij")
    # grid_sample takes positions scaled to [-1, 1] (pixel centres at the ends): x -> x * scale - 1
    scale = torch.tensor([2 / max(w - 1, 1), 2 / max(h - 1, 1)], device=u.device).view(1, 2, 1, 1)
    identity = torch.stack([xs, ys]).to(u) * scale - 1  # [1, 2, H, W]
    # Sampling is exact at whole pixels, but float32 rounding of the [-1, 1] positions shifts samples by
    # ~1e-6 px, which the thresholding step amplifies where |grad I1| is tiny (identical frames would get
    # flow of up to 0.25 px). Resampling I0 through the same grid makes the two agree bit for bit at u = 0.
    i0 = _warp(i0[:, None], identity)[:, 0]
    limit = epsilon**2 * h * w / tau**2  # OpenCV: stop when sum_x |u_new - u|^2 <= epsilon^2 H W
    for _ in range(warps):
        warped = _warp(i1_and_grad, identity + u * scale)  # I1(x + u0) and grad I1(x + u0)
        grad = warped[:, 1:]  # [N, 2, H, W]
        # rho(u) = rho_c + grad . u, with the constant part rho_c = I1(x+u0) - grad . u0 - I0(x)
        rho_c = warped[:, 0] - (grad * u).sum(1) - i0
        # -1 / (tau |grad I1|^2): the thresholding step's quotient, with tau folded in (see _step)
        neg_inv = -1 / (tau * (grad * grad).sum(1).clamp_min(torch.finfo(torch.float32).eps))
        u, p = _iterate(u, p, grad, rho_c, neg_inv, lt / tau, tau, taut, limit, inner, outer, median, check_every)
    return u


def _iterate(u: torch.Tensor, p: torch.Tensor, grad: torch.Tensor, rho_c: torch.Tensor, neg_inv: torch.Tensor,
             bound: float, tau: float, taut: float, limit: float, inner: int, outer: int, median: int,
             check_every: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The iterations of one warp, as OpenCV's: up to ``outer`` rounds of (median filter, up to
    ``inner`` iterations), a pair stopping once its update is small. Pairs that stop are written back
    to u and p and dropped from the working set, so the others run on a smaller batch."""
    active = torch.arange(len(u), device=u.device)
    work = [u, p, grad, rho_c, neg_inv]  # of the active pairs; u and p are written back as pairs finish
    du = torch.zeros_like(p)  # grad u by forward differences; the last column / row stay 0 (Neumann)
    for _ in range(outer):
        if median > 1:
            work[0] = _median_filter(work[0], median)
        for it in range(1, inner + 1):
            check = it % check_every == 0 or it == inner
            change = _step(*work, du[: len(active)], bound, tau, taut, check)
            if check:
                done = change <= limit
                if bool(done.any()):
                    u[active[done]], p[active[done]] = work[0][done], work[1][done]
                    keep = ~done
                    active, work = active[keep], [t[keep] for t in work]
                    if not len(active):
                        return u, p
    u[active], p[active] = work[0], work[1]
    return u, p


def _step(u: torch.Tensor, p: torch.Tensor, grad: torch.Tensor, rho_c: torch.Tensor, neg_inv: torch.Tensor,
          du: torch.Tensor, bound: float, tau: float, taut: float, check: bool) -> torch.Tensor | None:
    """One iteration, in place on u and p; returns each pair's sum_x |u_new - u|^2 / tau^2 if ``check``."""
    # Thresholding step (IPOL's TH): v = u + lambda theta grad I1          where rho(u) < -lambda theta |grad I1|^2,
    #                                   u - lambda theta grad I1          where rho(u) > +lambda theta |grad I1|^2,
    #                                   u - rho(u) grad I1 / |grad I1|^2  otherwise (this zeroes rho(v)),
    # that is v = u + c grad I1 with c = clamp(-rho / |grad I1|^2, -lambda theta, lambda theta); c / tau here.
    rho = torch.addcmul(rho_c, grad[:, 0], u[:, 0]).addcmul_(grad[:, 1], u[:, 1])
    c = rho.mul_(neg_inv).clamp_(-bound, bound).unsqueeze(1)
    # Primal step: u = v + tau div P = u + tau (div P + c grad I1). div is the backward difference with
    # P = 0 outside the frame, the negative adjoint of the forward-difference gradient (IPOL's discretisation).
    update = torch.add(p[:, :, 0], p[:, :, 1])
    update[..., 1:] -= p[:, :, 0, :, :-1]
    update[..., 1:, :] -= p[:, :, 1, :-1, :]
    update.addcmul_(grad, c)
    u.add_(update, alpha=tau)
    # Dual step (Chambolle's fixed point): P = (P + grad u) / (1 + tau/theta |grad u|).
    torch.sub(u[..., 1:], u[..., :-1], out=du[:, :, 0, :, :-1])
    torch.sub(u[..., 1:, :], u[..., :-1, :], out=du[:, :, 1, :-1, :])
    norm = torch.mul(du[:, :, 0], du[:, :, 0]).addcmul_(du[:, :, 1], du[:, :, 1]).sqrt_().mul_(taut).add_(1)
    p.add_(du).div_(norm.unsqueeze(2))
    return update.square().sum((1, 2, 3)) if check else None


def _warp(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """images [N, C, H, W] at positions grid [N, 2, H, W] (x, y in [-1, 1]): bicubic, zero outside, as
    OpenCV's remap with INTER_CUBIC (grid_sample's cubic kernel is OpenCV's, a = -0.75)."""
    grid = grid.expand(len(images), -1, -1, -1).permute(0, 2, 3, 1)
    return F.grid_sample(images, grid, mode="bicubic", padding_mode="zeros", align_corners=True)


def _centred_gradient(img: torch.Tensor) -> torch.Tensor:
    """grad I [N, 2, H, W] by central differences, one-sided (halved) at the border, as OpenCV's."""
    x = F.pad(img[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    return torch.stack([x[:, 1:-1, 2:] - x[:, 1:-1, :-2], x[:, 2:, 1:-1] - x[:, :-2, 1:-1]], 1) * 0.5


def _median_filter(u: torch.Tensor, size: int) -> torch.Tensor:
    """Median over size x size windows of each flow component, the border replicated (cv2.medianBlur):
    OpenCV's own on the CPU, where torch's is about 100x slower, torch's elsewhere."""
    return _median_opencv(u, size) if u.device.type == "cpu" else _median_torch(u, size)


def _median_opencv(u: torch.Tensor, size: int) -> torch.Tensor:
    import cv2

    planes = u.contiguous().numpy().reshape(-1, *u.shape[-2:])
    return torch.from_numpy(np.stack([cv2.medianBlur(x, size) for x in planes]).reshape(u.shape))


def _median_torch(u: torch.Tensor, size: int) -> torch.Tensor:
    r = size // 2
    patches = F.pad(u, (r, r, r, r), mode="replicate").unfold(2, size, 1).unfold(3, size, 1)
    return patches.reshape(*u.shape, size * size).median(-1).values
