"""Product ("gemm") kernels: a register-blocked MR x NR product over im2col panels.

* ``correlate_wide``: the product over "wide" output rows of input planes: the
  zero-padded input (``pad_input``, stride 1) or its stride phases
  (``wgrad.pack_phases``, any stride), where every panel row is one contiguous
  run of a plane, read in place (``_micro_x``: an implicit im2col; MR x NR
  accumulators in registers), in blocks of at most KC reduction rows. 1x1
  convolutions take this path with no padding and no waste: a plain product of
  the input.
* ``correlate_gemm`` (any stride): the same product after a general im2col
  (``_im2col``, ``_micro``), for outputs too small for the wide rows.

(The weight gradient's products are in ``wgrad``.)

The weight is packed once per call (``pack_weight``); ``pick_tile`` sizes the
tile. Every task owns a disjoint block of the output and sums in a fixed order
that does not depend on the task split (see ``cnnfast.backends.numba.kernels``).
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, prange, types, uint64
from numba.core import cgutils
from numba.extending import intrinsic

from . import JIT
from .common import copy_strided, fill, span
from .epilogue import store_act, store_act_step

# Register tile of the product: MR output channels x NR output pixels. 4 x 16
# float32 accumulators are 8 AVX2 registers, which leaves room for the operands:
# with 4 x 32 (16 registers, all of AVX2's) LLVM spilled accumulators to the
# stack in the inner loop, 2x slower (measured on AVX2 Zen 4: 4x16, 5x16 and
# 3x32 run alike, 6x16 and 4x32 at half their speed).
MR = 4
NR = 16
# The reduction is cut in blocks of at most KC rows (``correlate_wide``): a
# block's panel (KC rows of NR, read in place or copied) stays in L1 while every
# block of MR output channels sweeps it (the cpp backend's kGemmKC).
KC = 256


@intrinsic
def _stack_tile(typingctx, dtype):
    """A pointer to MR*NR elements on the stack. Heap arrays (np.empty) cannot be
    kept in registers by LLVM; a fixed-size alloca can (3x faster measured)."""
    def codegen(context, builder, signature, args):
        ty = context.get_value_type(dtype.dtype)
        return cgutils.alloca_once(builder, ty,
                                   size=context.get_constant(types.intp, MR * NR))
    return types.CPointer(dtype.dtype)(dtype), codegen



# ----------------------------------------------------------------------------- correlation


def pick_tile(k, positions):
    """Output pixels per im2col tile for a reduction of length ``k``: the tile
    (k x PT, at most ~512 KB of float32) stays in L2 while every block of MR output
    channels sweeps it; a small image is taken whole (one task, no ragged tile)."""
    cap = min(max((131072 // max(k, 1)) // NR * NR, NR), 256)
    whole = (positions + NR - 1) // NR * NR
    return int(whole if whole <= cap else cap)


# ``correlate_wide`` takes all the wide positions of an image as one tile when the
# tile's sums (its output channels, rounded up to MR, x positions) fit in this many
# bytes (they stay in L2) and there are images enough for the threads: the fixed
# cost of each task and its ragged last tile went (fmnist conv1, 726 positions:
# 14% faster than 3 tiles of 256; the transposed decoder layer's input gradient,
# 272 positions: 4% faster than 128; measured). The tiles change no sum.
WIDE_WHOLE_BYTES = 262144


def pick_wide_tile(k, positions, rows, itemsize, images, threads):
    """``correlate_wide``'s tile: an image's ``positions`` whole (see
    WIDE_WHOLE_BYTES; ``rows`` output channels rounded up to MR, ``images`` tasks
    of a whole tile), else ``pick_tile``."""
    whole = (positions + NR - 1) // NR * NR
    if whole * rows * itemsize <= WIDE_WHOLE_BYTES and images >= 4 * threads:
        return int(whole)
    return pick_tile(k, positions)


@njit(cache=True, fastmath=JIT["fastmath"], error_model="numpy")
def _micro(cp, wp, g, ob, K, tile):
    """``tile[i, j] = sum_k wp[g, ob, k, i] * cp[k, j]`` for one MR x NR tile;
    ``cp`` is one packed panel (K, NR) of the im2col buffer.

    The accumulators live on the stack and are only ever indexed with constants
    (the loops below have fixed trip counts), so LLVM keeps them in registers.
    Every index is a plain range variable: numba's negative-index wraparound on
    an offset index (``j0 + j``) would block vectorisation, hence the panels.
    """
    acc = carray(_stack_tile(cp.dtype), (MR, NR))
    for i in range(MR):
        for j in range(NR):
            acc[i, j] = 0
    for k in range(K):
        a0 = wp[g, ob, k, 0]
        a1 = wp[g, ob, k, 1]
        a2 = wp[g, ob, k, 2]
        a3 = wp[g, ob, k, 3]
        for j in range(NR):
            v = cp[k, j]
            acc[0, j] += a0 * v
            acc[1, j] += a1 * v
            acc[2, j] += a2 * v
            acc[3, j] += a3 * v
    for i in range(MR):
        for j in range(NR):
            tile[i, j] = acc[i, j]


# The two panel kernels of ``correlate_wide`` sweep every block of MR output
# channels over one panel in one call: a call per MR x NR tile paid its argument
# passing and register saves per tile (22% of the fmnist conv1 layer's product,
# K = 9; 3-5% at K = 147 to 1024, measured single-threaded).


@njit(cache=True, fastmath=JIT["fastmath"], error_model="numpy")
def _micro_p(bf, b0, af, a0, astep, kc, cf, c0, cstep, ldc, init, nob):
    """For the ``nob`` blocks ``ob`` of MR output channels, the MR x NR tile
    ``cf[c0 + ob*cstep + i*ldc + j] (+)= sum_{k < kc} af[a0 + ob*astep + k*MR + i] *
    bf[b0 + k*NR + j]`` over one block of the reduction, from a packed panel ``bf``
    (kc x NR) and packed weight rows ``af`` (kc x MR per block); ``init``: add to
    the tile's partial sum in ``cf`` (the previous reduction blocks) instead of
    starting at 0. Flat arrays and unsigned offsets (no views, no wraparound
    selects)."""
    acc = carray(_stack_tile(bf.dtype), (MR, NR))
    ub = uint64(b0)
    for ob in range(nob):
        uc = uint64(c0 + ob * cstep)
        if init:
            for i in range(MR):
                for j in range(NR):
                    acc[i, j] = cf[uc + uint64(i * ldc + j)]
        else:
            for i in range(MR):
                for j in range(NR):
                    acc[i, j] = 0
        ua = uint64(a0 + ob * astep)
        for k in range(uint64(kc)):
            ka = ua + k * uint64(MR)
            a0_ = af[ka]
            a1 = af[ka + uint64(1)]
            a2 = af[ka + uint64(2)]
            a3 = af[ka + uint64(3)]
            kb = ub + k * uint64(NR)
            for j in range(uint64(NR)):
                v = bf[kb + j]
                acc[0, j] += a0_ * v
                acc[1, j] += a1 * v
                acc[2, j] += a2 * v
                acc[3, j] += a3 * v
        for i in range(MR):
            for j in range(NR):
                cf[uc + uint64(i * ldc + j)] = acc[i, j]


@njit(cache=True, fastmath=JIT["fastmath"], error_model="numpy")
def _micro_x(xf, base, koff, k0, kc, af, a0, astep, cf, c0, cstep, ldc, init, nob):
    """``_micro_p`` with the panel read in place: row ``k`` of the panel is
    ``xf[base + koff[k0 + k] + j]`` (an implicit im2col; the caller keeps every
    read inside the array)."""
    acc = carray(_stack_tile(xf.dtype), (MR, NR))
    for ob in range(nob):
        uc = uint64(c0 + ob * cstep)
        if init:
            for i in range(MR):
                for j in range(NR):
                    acc[i, j] = cf[uc + uint64(i * ldc + j)]
        else:
            for i in range(MR):
                for j in range(NR):
                    acc[i, j] = 0
        ua = uint64(a0 + ob * astep)
        for k in range(uint64(kc)):
            ka = ua + k * uint64(MR)
            a0_ = af[ka]
            a1 = af[ka + uint64(1)]
            a2 = af[ka + uint64(2)]
            a3 = af[ka + uint64(3)]
            s0 = uint64(base + koff[k0 + k])
            for j in range(uint64(NR)):  # unsigned: no wraparound select per load
                v = xf[s0 + j]
                acc[0, j] += a0_ * v
                acc[1, j] += a1 * v
                acc[2, j] += a2 * v
                acc[3, j] += a3 * v
        for i in range(MR):
            for j in range(NR):
                cf[uc + uint64(i * ldc + j)] = acc[i, j]


@njit(cache=True, fastmath=JIT["fastmath"], error_model="numpy")
def _im2col(xf, x_shape, n, c0, CG, kshape, out_shape, stride, pad, dil, p0, pn, cf, K,
            spans):
    """Fill the panels ``cf`` (flat (PT/NR, K, NR)): element ``[j // NR, k, j % NR]``
    is the input value tap ``k`` = (c, kd, kh, kw) reads for output pixel ``p0 + j``,
    0 in the padding and past ``pn``. ``spans[kw]`` = the valid output columns of
    tap kw. ``xf`` is the input, flat (no views in loops: see ``common``).

    Work is split into segments (one output row within one panel) so that the
    per-segment index arithmetic is paid once for all K taps.
    """
    C, D, H, W = x_shape[1], x_shape[2], x_shape[3], x_shape[4]
    KD, KH, KW = kshape
    OD, OH, OW = out_shape
    sd, sh, sw = stride
    pd, ph, pw = pad
    dd, dh, dw = dil
    npan = (pn + NR - 1) // NR
    tail = pn - (npan - 1) * NR
    if tail < NR:  # zero the tail of the last panel
        for k in range(K):
            fill(cf, ((npan - 1) * K + k) * NR + tail, NR - tail, 0)
    j = 0
    while j < pn:
        p = p0 + j
        ow0 = p % OW
        r = p // OW
        oh = r % OH
        od = r // OH
        jb = j // NR
        jj = j - jb * NR
        seg = min(OW - ow0, NR - jj, pn - j)
        k = 0
        for c in range(CG):
            for kd in range(KD):
                idd = od * sd - pd + kd * dd
                for kh in range(KH):
                    ih = oh * sh - ph + kh * dh
                    inside = 0 <= idd < D and 0 <= ih < H
                    xrow = (((n * C + c0 + c) * D + idd) * H + ih) * W
                    for kw in range(KW):
                        d0 = (jb * K + k) * NR + jj
                        if not inside:
                            fill(cf, d0, seg, 0)
                        else:
                            lo = min(max(spans[kw, 0] - ow0, 0), seg)
                            hi = max(min(spans[kw, 1] - ow0, seg), lo)
                            fill(cf, d0, lo, 0)
                            if hi > lo:
                                copy_strided(cf, d0 + lo, xf,
                                             xrow + (ow0 + lo) * sw + kw * dw - pw, sw,
                                             hi - lo)
                            fill(cf, d0 + hi, seg - hi, 0)
                        k += 1
        j += seg


@njit(**JIT)
def correlate_gemm(x, wp, b, y, kshape, stride, pad, dil, groups, PT, nthreads, act,
                   slope):
    """Correlation as tiled products: task = (n, group, tile of PT output pixels).

    ``wp`` is the weight packed as (G, ceil(OG/MR), K, MR) (zero rows past OG):
    the MR values one reduction step needs sit together. Each task im2col's its
    tile into a private buffer of NR-wide panels, then sweeps every block of MR
    output channels over it. Each output is written once, with the bias and the
    activation ``act`` (``epilogue.store_act``).
    """
    N, C = x.shape[0], x.shape[1]
    O = y.shape[1]
    OD, OH, OW = y.shape[2], y.shape[3], y.shape[4]
    KD, KH, KW = kshape
    CG = C // groups
    OG = O // groups
    K = CG * KD * KH * KW
    OGB = wp.shape[1]
    P = OD * OH * OW
    ntile = (P + PT - 1) // PT
    yf = y.reshape(y.size)
    xf = x.reshape(x.size)
    spans = np.empty((KW, 2), np.int64)
    for kw in range(KW):
        lo, hi = span(OW, stride[2], kw * dil[2] - pad[2], x.shape[4])
        spans[kw, 0] = lo
        spans[kw, 1] = hi
    ntask = N * groups * ntile
    # Tasks run in chunks so that a chunk allocates its buffers once (a fresh
    # ~100 KB buffer per task costs page faults); each task is computed the same
    # way whatever its chunk, so the split does not change any result.
    nchunk = min(ntask, 4 * nthreads)
    for chunk in prange(nchunk):
        col = np.empty((PT // NR, K, NR), x.dtype)
        colf = col.reshape(col.size)
        acc = np.empty((MR, NR), x.dtype)
        accf = acc.reshape(MR * NR)
        for task in range(chunk * ntask // nchunk, (chunk + 1) * ntask // nchunk):
            tile = task % ntile
            r = task // ntile
            g = r % groups
            n = r // groups
            p0 = tile * PT
            pn = min(PT, P - p0)
            npan = (pn + NR - 1) // NR
            _im2col(xf, x.shape, n, g * CG, CG, kshape, (OD, OH, OW), stride, pad, dil,
                    p0, pn, colf, K, spans)
            for ob in range(OGB):
                for jb in range(npan):
                    _micro(col[jb], wp, g, ob, K, acc)
                    j0 = jb * NR
                    cols = min(NR, pn - j0)
                    for i in range(min(MR, OG - ob * MR)):
                        o = g * OG + ob * MR + i
                        store_act(yf, (n * O + o) * P + p0 + j0, accf, i * NR, cols, b[o],
                                  act, slope)


@njit(**JIT)
def pad_input(x, xp, pad):
    """``xp[n, c, u, v, w] = x[n, c, u - pd, v - ph, w - pw]`` inside ``x``, else 0
    (a negative pad crops). One task per (n, c, depth slice); flat rows (array
    views in the loop: 1.1-1.4x slower, measured; see ``common``)."""
    N, C, D, H, W = x.shape
    Dp, Hp, Wp = xp.shape[2], xp.shape[3], xp.shape[4]
    pd, ph, pw = pad
    lo, hi = span(Wp, 1, -pw, W)
    xf = x.reshape(x.size)
    pf = xp.reshape(xp.size)
    for task in prange(N * C * Dp):
        u = task % Dp
        nc = task // Dp
        iu = u - pd
        for v in range(Hp):
            d0 = (task * Hp + v) * Wp
            iv = v - ph
            if iu < 0 or iu >= D or iv < 0 or iv >= H:
                fill(pf, d0, Wp, 0)
                continue
            fill(pf, d0, lo, 0)
            copy_strided(pf, d0 + lo, xf, ((nc * D + iu) * H + iv) * W + lo - pw, 1,
                         hi - lo)
            fill(pf, d0 + hi, Wp - hi, 0)


@njit(**JIT)
def correlate_wide(xp, wp, b, y, ylay, kbase, koff, groups, PT, nthreads, nr_runtime,
                   act, slope):
    """Correlation as tiled products over "wide" rows of input planes ``xp``
    (N, planes, Dq, Hq, Wq): the zero-padded input (stride 1), or its stride
    phases (``wgrad.pack_phases``, image by image; any stride).

    Row ``k`` (input channel c, tap t) of the im2col of output position ``q`` is
    the value at ``q + koff[k]`` of plane ``kbase[k]`` (counted from the group's
    first plane), where ``q = (od*Hq + oh)*Wq + ow`` is the "wide" position: the
    outputs are computed over rows as long as the planes' rows, so that a panel
    row is one contiguous run, read in place (``_micro_x``; the last panels of a
    plane are copied, ``_micro_p``). Positions with
    ``ow >= OW`` or ``oh >= OH`` are computed and dropped (waste ``Wq/OW``, chosen
    by the caller). ``nr_runtime`` is NR, passed at run time on purpose (see the
    copy loop). Each output is written once, with the bias and the activation
    ``act`` (``epilogue.store_act``).

    ``ylay`` = (y0, ysn, yso, ysd, ysh, ysw, OD, OH, OW): output (n, o, od, oh, ow)
    is ``y.flat[y0 + n*ysn + o*yso + od*ysd + oh*ysh + ow*ysw]`` (``contiguous``:
    all of ``y``; a stride phase of a transposed convolution's output is written
    in place, every ``ysw``-th element of its rows, with no copy).
    """
    N, NP, Dp, Hp, Wp = xp.shape
    O = y.shape[1]
    y0, ysn, yso, ysd, ysh, ysw, OD, OH, OW = ylay
    PG = NP // groups  # planes per group
    OG = O // groups
    K = koff.shape[0]
    OGB = wp.shape[1]
    plane = Dp * Hp * Wp
    Qn = ((OD - 1) * Hp + OH) * Wp
    ntile = (Qn + PT - 1) // PT
    xflat = xp.reshape(xp.size)
    yflat = y.reshape(y.size)
    wflat = wp.reshape(wp.size)
    unr = uint64(nr_runtime)
    offmax = 0
    kfull = np.empty(K, np.int64)  # row k of the implicit im2col
    for k in range(K):
        offmax = max(offmax, koff[k])
        kfull[k] = kbase[k] * plane + koff[k]
    # The reduction in equal blocks of at most KC rows, fixed by K alone (the
    # order of the sums does not depend on the tiles or the threads).
    nkb = (K + KC - 1) // KC
    kblk = (K + nkb - 1) // nkb
    ntask = N * groups * ntile
    # Chunks allocate their buffers once; results do not depend on the split.
    nchunk = min(ntask, 4 * nthreads)
    for chunk in prange(nchunk):
        pan = np.empty(kblk * NR, xp.dtype)
        # the tile's sums (partial until the last reduction block), (OGB*MR, PT)
        cbuf = np.empty(OGB * MR * PT, xp.dtype)
        segj = np.empty(PT + 1, np.int64)  # the tile's pieces of output rows
        segm = np.empty(PT + 1, np.int64)
        segy = np.empty(PT + 1, np.int64)
        sink = np.zeros(1, xp.dtype)
        for task in range(chunk * ntask // nchunk, (chunk + 1) * ntask // nchunk):
            tile = task % ntile
            r = task // ntile
            g = r % groups
            n = r // groups
            q0 = tile * PT
            qn = min(PT, Qn - q0)
            npan = (qn + NR - 1) // NR
            gbase = (n * NP + g * PG) * plane
            # Touch the tile's new input (past what the chunk's previous tile
            # read) plane by plane, one load per cache line: a few sequential
            # streams that the prefetcher follows, before the panels read them
            # a line from each of many planes at a time (memory latency: 10%
            # slower for 1x1 convs, measured).
            s = xp.dtype.type(0)
            t0 = q0 if task == chunk * ntask // nchunk else q0 + offmax
            t1 = min(q0 + qn + offmax, plane)
            for pl in range(PG):
                pb = gbase + pl * plane
                for u in range(t0, t1, 16):
                    s += xflat[pb + u]
            sink[0] += s
            # Loop order of a blocked GEMM (the cpp backend's gemm_packed):
            # reduction block, panel, output channels, so that a panel's rows
            # (<= KC of NR) stay in L1 while every block of output channels
            # sweeps them, and the weight block streams from L2.
            for kb in range(nkb):
                k0 = kb * kblk
                kc = min(kblk, K - k0)
                for jb in range(npan):
                    qs = q0 + jb * NR
                    # A panel wholly in the padding rows between two depth
                    # slices (3-d: rows OH..Hp-1) has no output: skipped (its
                    # sums are never read; 3% of the conv3d.k3 product).
                    r0 = qs // Wp
                    r1 = (qs + NR - 1) // Wp
                    if r0 % Hp >= OH and r1 % Hp >= OH and r0 // Hp == r1 // Hp:
                        continue
                    # The panels whose reads stay inside the plane are read in
                    # place: the rows of one block share cache lines (taps of one
                    # input row), so they stay in L1 while the output blocks sweep
                    # them, like a packed panel, at no copy (a packed copy of
                    # every panel: 5-40% slower on the suite's conv1d.k9 and
                    # conv3d.k3 rows, measured). The last panels of a plane are
                    # copied, with zeros past its end.
                    direct = qs + offmax + NR <= plane
                    if not direct:
                        # Flat, unsigned indices and a runtime trip count: no
                        # array views (each costs atomic reference counting), no
                        # wraparound selects, no full unrolling into scalar code
                        # (LLVM cannot prove that pan and xf do not overlap) --
                        # 3x faster than the obvious loop (measured).
                        for k in range(kc):
                            st = qs + koff[k0 + k]
                            sbase = gbase + kbase[k0 + k] * plane
                            d0 = uint64(k * NR)
                            if st + NR <= plane:
                                s0 = uint64(sbase + st)
                                for j in range(unr):
                                    pan[d0 + j] = xflat[s0 + j]
                            else:  # past the plane: only dropped positions read here
                                for j in range(NR):
                                    pan[d0 + uint64(j)] = (xflat[sbase + st + j]
                                                           if st + j < plane else 0)
                    # every block of MR output channels: weight rows K*MR apart,
                    # tiles MR*PT apart in cbuf
                    a0 = (g * OGB * K + k0) * MR
                    if direct:
                        _micro_x(xflat, gbase + qs, kfull, k0, kc, wflat, a0, K * MR, cbuf,
                                 jb * NR, MR * PT, PT, kb > 0, OGB)
                    else:
                        _micro_p(pan, 0, wflat, a0, K * MR, kc, cbuf, jb * NR, MR * PT, PT,
                                 kb > 0, OGB)
            # The tile's outputs, output row by output row (the cpp backend's
            # bias_act_rows): the row pieces are found once per tile, and each
            # (channel, piece) is one contiguous run in cbuf and in y (pieces of
            # a panel per block of MR channels instead: 1.5x slower for the
            # fmnist conv1 layer, 1 input channel, measured).
            nseg = 0
            j = 0
            while j < qn:
                q = q0 + j
                ow = q % Wp
                rr = q // Wp
                oh = rr % Hp
                od = rr // Hp
                seg = min(Wp - ow, qn - j)
                if oh < OH and ow < OW:
                    segj[nseg] = j
                    segm[nseg] = min(seg, OW - ow)
                    segy[nseg] = y0 + od * ysd + oh * ysh + ow * ysw
                    nseg += 1
                j += seg
            for i in range(OG):
                o = g * OG + i
                yo = n * ysn + o * yso
                for sg in range(nseg):
                    if ysw == 1:
                        store_act(yflat, yo + segy[sg], cbuf, i * PT + segj[sg], segm[sg],
                                  b[o], act, slope)
                    else:
                        store_act_step(yflat, yo + segy[sg], ysw, cbuf, i * PT + segj[sg],
                                       segm[sg], b[o], act, slope)


def contiguous(y):
    """The ``ylay`` of ``correlate_wide`` that writes all of ``y`` (N, O, OD, OH, OW)."""
    _, O, OD, OH, OW = y.shape
    P = OD * OH * OW
    return (0, O * P, P, OH * OW, OW, 1, OD, OH, OW)


# The weight packing runs on every call, serially in the caller's thread: compiled
# loops (one pass) instead of numpy's transposing copies (five passes for a stride
# phase of a transposed convolution; 1.1 ms of python-side time per call of the
# decoder layer, measured, against ~9 ms of kernels on two threads).


@njit(cache=True)
def _pack(w2, groups, wp):
    """``wp[g, ob, k, i] = w2[g*OG + ob*MR + i, k]``, 0 past OG."""
    OGB, K = wp.shape[1], wp.shape[2]
    OG = w2.shape[0] // groups
    for g in range(groups):
        for ob in range(OGB):
            for k in range(K):
                for i in range(MR):
                    o = ob * MR + i
                    wp[g, ob, k, i] = w2[g * OG + o, k] if o < OG else 0


def pack_weight(w, groups, dtype):
    """(O, CG, *k) -> (G, ceil(OG/MR), K, MR), zero rows past OG (a small copy)."""
    o = w.shape[0]
    og = o // groups
    k = int(np.prod(w.shape[1:]))
    wp = np.empty((groups, (og + MR - 1) // MR, k, MR), dtype)
    _pack(np.ascontiguousarray(w, dtype=dtype).reshape(o, k), groups, wp)
    return wp


@njit(cache=True)
def adjoint_taps(w, groups, taps, out):
    """``out[g*OG + o, c, t] = w[g*CG + c, o, taps[t]]``: the conv-layout weight
    (G*OG, CG, T') of a transposed-conv weight ``w`` (Ci, OG, T) (taps flat),
    restricted to (and ordered by) ``taps`` (the flipped adjoint's taps)."""
    Ci, OG = w.shape[0], w.shape[1]
    CG = Ci // groups
    for g in range(groups):
        for c in range(CG):  # w read in order
            for o in range(OG):
                for t in range(taps.shape[0]):
                    out[g * OG + o, c, t] = w[g * CG + c, o, taps[t]]
