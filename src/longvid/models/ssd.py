"""Mamba2's SSD scan in plain PyTorch: the step-by-step recurrence and the chunked algorithm.

Shapes: b batch, L sequence, h heads, p head dim, g groups (heads share B and C within a group),
n state size, c chunks of l steps. Per head the scan is
    state_t = exp(dt_t * A) * state_{t-1} + dt_t * x_t B_t^T          y_t = state_t C_t
`ssd_reference` writes that recurrence out step by step; `ssd_chunked` computes the same thing with
exact attention-like products inside each chunk and one state hand-over per chunk (Mamba2 paper §6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from longvid.models import cpu_kernels

# The chunked scan keeps its cumulative log-decays in base 2 and exponentiates with exp2: on CPU,
# torch.exp ran 2.5x slower than exp2 (and exp of -inf, or below fp32's underflow at -87, 2-8x slower
# again). Every decay factor is floored at 2^-86 ~ 1e-26: against terms of order 1 it is zero in fp32
# and fp64 alike, and the products it enters stay above the denormals (2^-147 and less, unfloored, for
# a fast-decaying head: MKL's batched products ran 60x slower on such operands in a microbenchmark).
LOG2E = 1.4426950408889634
EXP2_FLOOR = -86.0


def ssd_reference(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                  return_final_state: bool = False):
    """The SSM recurrence one step at a time (slow; the definition the chunked scan must match).

    x (b,L,h,p), dt (b,L,h) positive steps, A (h,) negative, B and C (b,L,g,n) -> y (b,L,h,p),
    without the D skip term; and the last state (b,h,p,n) if asked.
    """
    b, L, h, p = x.shape
    heads_per_group = h // B.shape[2]
    B = B.repeat_interleave(heads_per_group, dim=2)
    C = C.repeat_interleave(heads_per_group, dim=2)
    state = x.new_zeros(b, h, p, B.shape[-1])
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t] * A)[..., None, None]
        state = decay * state + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C[:, t]))
    y = torch.stack(ys, dim=1)
    return (y, state) if return_final_state else y


def ssd_chunked(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                chunk_size: int, return_final_state: bool = False, D: torch.Tensor | None = None):
    """Chunked SSD scan: same arguments and results as `ssd_reference`, O(L * chunk_size) work; with D
    ((h,) or (h, p)) Mamba2's skip term D x is added to y (inside the scan's own passes over y).

    Any L works: the last chunk is padded with steps of dt = 0 (decay exp(0) = 1, input dt * x = 0)
    that come after all real ones, so causality keeps them out of y and the final state is exact.
    """
    y, state = _SSDChunked.apply(x, dt, A, B, C, min(chunk_size, x.shape[1]), D)
    return (y, state) if return_final_state else y


def _pieces(L: int, l: int):
    """(rows, chunks) view makers pairing a (b, L, ...) tensor with a chunked (b, c, l, ...) one: the
    whole chunks, then the rows of a partial last chunk. Writing through them pads without a copy."""
    c0, r = divmod(L, l)
    out = [(lambda t: t[:, :c0 * l].unflatten(1, (c0, l)), lambda t: t[:, :c0])] if c0 else []
    return out + ([(lambda t: t[:, c0 * l:], lambda t: t[:, c0, :r])] if r else [])


def _to_chunks(dst: torch.Tensor, fn, rows=(), chunks=()) -> torch.Tensor:
    """dst (b, c, l, ...) = fn(*rows, *chunks): rows (b, L, ...), chunks like dst; padded steps zeroed."""
    L, l = rows[0].shape[1], dst.shape[2]
    for R, Ch in _pieces(L, l):
        fn(*map(R, rows), *map(Ch, chunks), out=Ch(dst))
    dst[:, -1, L - (dst.shape[1] - 1) * l:] = 0
    return dst


def _to_rows(dst: torch.Tensor, fn, rows=(), chunks=()) -> torch.Tensor:
    """dst (b, L, ...) = fn(*rows, *chunks) with chunks (b, c, l, ...): padded steps dropped."""
    for R, Ch in _pieces(dst.shape[1], chunks[0].shape[2]):
        fn(*map(R, rows), *map(Ch, chunks), out=R(dst))
    return dst


def _decay(log2_decay: torch.Tensor) -> torch.Tensor:
    """2^x, floored at 2^EXP2_FLOOR (see above)."""
    return log2_decay.clamp(min=EXP2_FLOOR).exp2_()


def _copy(t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return out.copy_(t)


class _SSDChunked(torch.autograd.Function):
    """The chunked scan with a hand-written backward (Mamba2 paper §6 and mamba_ssm's Triton kernels).

    Autograd through the same maths spent most of its time outside the matmuls: broadcast products
    over permuted (chunk, head, step, step) views and their copies, a zero-filled gradient per chunk
    of the state loop, stacks, pads and slices. Here each large tensor is written once, in the layout
    its matmul reads, the hand-over runs in place, and the backward reuses the forward's matrices.
    fp32 on CPU runs the same maths as C code instead (cpu_kernels: chunk after chunk per head, the
    state held in cache); the PyTorch path serves other devices and dtypes, and is the tests' reference.

    Per chunk, with a the cumulative log-decay dt*A from the chunk start and X = dt * x:
      intra   y_l += sum_{s<=l} (C_l . B_s) exp(a_l - a_s) X_s               (M = S * decay, y = M X)
      states  h_k  = exp(a_last) h_{k-1} + sum_s exp(a_last - a_s) X_s B_s^T  (h_k: state after chunk k)
      inter   y_l += exp(a_l) h_{k-1} C_l
    (The code holds a in base 2, a * log2(e), and exponentiates with exp2; gradients are in natural units.)
    The heads of a group share B and C: the state products stack them into one matrix (hg * p rows)
    rather than broadcasting B over them, which would copy it.
    """

    @staticmethod
    def forward(ctx, x, dt, A, B, C, l, D):
        b, L, h, p = x.shape
        g, n = B.shape[-2:]
        hg, c = h // g, -(-L // l)
        ctx.fused = cpu_kernels.applies(x, dt, A, B, C, D)  # fp32 on CPU: all of it in C (see above)
        ctx.D_shape = None if D is None else D.shape
        D = None if D is None else D.view(h, -1).expand(h, p)
        # (b,c,h,l), in log2 units: decays between two steps are differences of a, as in mamba_ssm's
        # kernels; in fp32 the cancellation error stays small for chunks of a few hundred steps
        dt_c = F.pad(dt, (0, 0, 0, c * l - L)).view(b, c, l, h)
        a = (dt_c * (A * LOG2E)).cumsum(2).transpose(2, 3).contiguous()
        if ctx.fused:  # chunk after chunk per head in C, the state held in cache
            y, final, S, hprev = cpu_kernels.ssd_scan_forward(x, dt, a, B, C, D, EXP2_FLOOR)
            ctx.save_for_backward(x, dt, A, a, B, C, D, S, hprev)
            ctx.set_materialize_grads(False)
            return y, final
        # Per-step factors are kept in row order (b,c,l,h) like x and y (suffix _r): elementwise ops
        # whose operands share one layout ran 2-3x faster than with a permuted operand.
        w_end_r = _decay(a[..., -1:] - a).transpose(2, 3).contiguous()  # from a step to its chunk's end
        # X = dt * x twice: heads first for the intra-chunk product (one bmm), and in rows times w_end
        # for the states
        xdt = x.new_empty(b, c, h, l, p)
        _to_chunks(xdt.transpose(2, 3), torch.mul, rows=(x, dt[..., None]))
        xe = _to_chunks(x.new_empty(b, c, l, h, p), torch.mul, rows=(x,), chunks=((dt_c * w_end_r)[..., None],))
        Bg, Cg = (_to_chunks(x.new_empty(b, c, g, l, n).transpose(2, 3), _copy, rows=(t,)).transpose(2, 3)
                  for t in (B, C))  # (b,c,g,l,n)

        # intra-chunk decays 2^(a_l - a_s), s <= l: the exponent clamped to [EXP2_FLOOR, 0] (a
        # fast-decaying head makes most of the matrix that small) and the future zeroed after
        S = Cg @ Bg.transpose(-1, -2)  # (b,c,g,l,s)
        decay = (a[..., :, None] - a[..., None, :]).clamp_(EXP2_FLOOR, 0).exp2_().tril_()  # (b,c,h,l,s)
        M = decay.view(b, c, g, hg, l, l) * S[:, :, :, None]
        y_intra = M.view(b, c, h, l, l) @ xdt  # (b,c,h,l,p)

        # Each chunk's own contribution to the state at its end, then the hand-over in place.
        xe = xe.view(b, c, l, g, hg * p).transpose(2, 3)  # (b,c,g,l,hg*p): X * w_end
        states = (xe.transpose(-1, -2) @ Bg).view(b, c, h, p, n)
        e = _decay(a[..., -1])  # (b,c,h): each chunk's decay over all of it
        es, hs = e[..., None, None].unbind(1), states.unbind(1)
        for k in range(1, c):
            hs[k].addcmul_(hs[k - 1], es[k])

        y_inter = Cg[:, 1:] @ states[:, :-1].view(b, c - 1, g, hg * p, n).transpose(-1, -2)  # (b,c-1,g,l,hp)
        ea_r = _decay(a).transpose(2, 3).contiguous()
        y = x.new_empty(b, c, l, h, p)  # rows in order
        y[:, 0] = y_intra[:, 0].transpose(1, 2)  # no state before the first chunk
        torch.addcmul(y_intra.view(b, c, g, hg, l, p)[:, 1:].permute(0, 1, 4, 2, 3, 5),
                      y_inter.view(b, c - 1, g, l, hg, p).transpose(2, 3),
                      ea_r.view(b, c, l, g, hg)[:, 1:, ..., None],
                      out=y[:, 1:].view(b, c - 1, l, g, hg, p))
        ctx.save_for_backward(x, dt, A, a, xdt, Bg, Cg, decay, S, M, w_end_r, ea_r, xe, states, y_inter, D)
        ctx.set_materialize_grads(False)
        y = y.view(b, c * l, h, p)[:, :L]
        return y if D is None else torch.addcmul(y, x, D), states[:, -1].clone()

    @staticmethod
    def backward(ctx, gy, g_final):
        if ctx.fused:
            x, dt, A, a, B, C, D, S, hprev = ctx.saved_tensors
            gx, gdt, ga, gB, gC, gD = cpu_kernels.ssd_scan_backward(x, dt, a, B, C, D, S, hprev, gy, g_final,
                                                                     EXP2_FLOOR)
            return _with_decay_grads(gx, gdt, ga, gB, gC, gD, A, dt, ctx.D_shape)
        x, dt, A, a, xdt, Bg, Cg, decay, S, M, w_end_r, ea_r, xe, states, y_inter, D = ctx.saved_tensors
        b, c, h, l, p = xdt.shape
        g, n, L = Bg.shape[2], Bg.shape[-1], x.shape[1]
        hg = h // g
        gy = x.new_zeros(x.shape) if gy is None else gy
        ga = x.new_zeros(b, c, h, l)

        # inter-chunk term y += exp(a_l) C_l h_{k-1}, chunks 1..c-1; and dy heads first (gyh) for the
        # intra-chunk products below
        G1 = _to_chunks(x.new_empty(b, c, l, h, p), torch.mul, rows=(gy,), chunks=(ea_r[..., None],))[:, 1:]
        ga[:, 1:] += torch.linalg.vecdot(G1.view(b, c - 1, l, g, hg, p), y_inter.view(
            b, c - 1, g, l, hg, p).transpose(2, 3)).view(b, c - 1, l, h).transpose(2, 3)
        gyh = _to_chunks(x.new_empty(b, c, h, l, p).transpose(2, 3), _copy, rows=(gy,)).transpose(2, 3)
        G1 = G1.view(b, c - 1, l, g, hg * p).transpose(2, 3)  # (b,c-1,g,l,hg*p)
        gC = x.new_zeros(b, c, g, l, n)
        torch.matmul(G1, states[:, :-1].view(b, c - 1, g, hg * p, n), out=gC[:, 1:])

        # Gs[:, k]: gradient of the state after chunk k; its own part, then the hand-over backward
        Gs = x.new_empty(b, c, g, hg * p, n)
        torch.matmul(G1.transpose(-1, -2), Cg[:, 1:], out=Gs[:, :-1])
        Gs[:, -1] = 0 if g_final is None else g_final.view(b, g, hg * p, n)
        Gh = Gs.view(b, c, h, p, n)
        # and the gradient of each chunk's decay, sum(G_k * h_{k-1}), taken while G_k is in cache
        e = _decay(a[..., -1])
        es, gs, hs = e[..., None, None].unbind(1), Gh.flatten(-2).unbind(1), states.flatten(-2).unbind(1)
        g_e = x.new_zeros(b, c, h)
        for k in range(c - 1, 0, -1):
            torch.linalg.vecdot(gs[k], hs[k - 1], out=g_e[:, k])
            Gh[:, k - 1].addcmul_(Gh[:, k], es[k])
        ga[..., -1] += g_e * e

        # own contributions: states = xe^T B with xe = X * w_end
        gxe = (Bg @ Gs.transpose(-1, -2)).view(b, c, g, l, hg, p).transpose(2, 3).reshape(b, c, l, h, p)
        gB = xe @ Gs  # (b,c,g,l,n)

        # intra-chunk: y = M X with M = S * decay; and X = dt * x, whose gradient is gX = gxdt + gxe * w_end
        xe_r = xe.transpose(2, 3).view(b, c, l, h, p)
        gxdt = M.view(b, c, h, l, l).transpose(-1, -2) @ gyh  # (b,c,h,l,p)
        gw_r = torch.linalg.vecdot(gxe, xe_r)  # (b,c,l,h)
        gX = torch.addcmul(gxdt.transpose(2, 3), gxe, w_end_r[..., None])  # (b,c,l,h,p)
        gdt = _to_rows(x.new_empty(b, L, h), torch.linalg.vecdot, rows=(x,), chunks=(gX,))
        gx = _to_rows(x.new_empty(b, L, h, p), torch.mul, rows=(dt[..., None],), chunks=(gX,))
        P = (gyh @ xdt.transpose(-1, -2)).mul_(decay).view(b, c, g, hg, l, l)  # gradient of S per head
        gS = P[:, :, :, 0] if hg == 1 else P.sum(3)
        E = P.mul_(S[:, :, :, None]).view(b, c, h, l, l)  # gradient of the decay matrix times itself
        ga += E.sum(-1) - E.sum(-2)
        ga -= gw_r.transpose(2, 3)
        ga[..., -1] += gw_r.sum(2)
        gC += gS @ Bg
        gB += gS.transpose(-1, -2) @ Cg
        if g == 1:  # (b,c,1,l,n) is already in row order
            gB, gC = (t.view(b, c * l, g, n)[:, :L] for t in (gB, gC))
        else:
            gB, gC = (_to_rows(x.new_empty(b, L, g, n), _copy, chunks=(t.transpose(2, 3),)) for t in (gB, gC))
        gD = None
        if D is not None:  # the skip term y += D x
            gx.addcmul_(gy, D)
            gD = torch.linalg.vecdot(gy.flatten(0, 1), x.flatten(0, 1), dim=0)
        return _with_decay_grads(gx, gdt, ga, gB, gC, gD, A, dt, ctx.D_shape)


def _with_decay_grads(gx, gdt, ga, gB, gC, gD, A, dt, D_shape):
    """The backward's results, given ga (b, c, h, l), the gradient of the cumulative log-decays: a =
    cumsum(dt * A) within each chunk, so a step's gradient is the sum over later steps; and gD (h, p)
    summed to D's own shape."""
    b, c, h, l = ga.shape
    g_dA = ga.flip(-1).cumsum(-1).flip(-1).transpose(2, 3).reshape(b, c * l, h)[:, :dt.shape[1]]
    gdt.addcmul_(g_dA, A)
    gA = (g_dA * dt).sum((0, 1))
    if gD is not None and len(D_shape) == 1:
        gD = gD.sum(-1)
    return gx, gdt, gA, gB, gC, None, gD
