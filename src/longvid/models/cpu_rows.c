/* Fused CPU code for the rows around the Mamba2 scan, fp32, row-major (rows, channels): the gated norm,
 * the causal conv, and a scan block's input layer norm and gated residual, forward and backward; and the
 * MLP's tanh-approximate GELU.
 *
 * In PyTorch each elementwise step is one pass over memory; here each row is read once and every step
 * runs on it in registers. Built with cpu_scan.c and loaded by cpu_kernels.py. Every function handles a
 * range of rows so that callers can split the work across threads; sums over rows (weight and bias
 * gradients) are added into buffers the caller owns per thread.
 */
#include <stdlib.h>
#include <string.h>

/* glibc's vector expf (libmvec), so that the channel loops vectorise: its math.h declares it only
 * under -ffast-math, which would also drop NaN and infinity semantics. */
#pragma omp declare simd notinbranch
extern float expf(float);

static inline float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }


/* out = rmsnorm(y * silu(z)) * w per group of gs channels; r = 1 / rms per row and group. */
void gated_norm_fwd(const float *y, const float *z, const float *w, float *out, float *r, long t0, long t1, long d,
                    long gs, float eps) {
    for (long t = t0; t < t1; t++) {
        const float *yt = y + t * d, *zt = z + t * d;
        float *ot = out + t * d;
        for (long c0 = 0; c0 < d; c0 += gs) {
            float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
            for (long c = c0; c < c0 + gs; c++) {
                float v = yt[c] * zt[c] * sigmoid(zt[c]);
                ot[c] = v;
                ss += v * v;
            }
            float rr = 1.0f / __builtin_sqrtf(ss / (float)gs + eps);
            r[t * (d / gs) + c0 / gs] = rr;
#pragma omp simd
            for (long c = c0; c < c0 + gs; c++) ot[c] *= rr * w[c];
        }
    }
}

/* Gradients of gated_norm_fwd given g = d loss / d out: gy, gz per row; gw summed over rows.
 * With v = y silu(z), out = v r w:  dv = r w g - v r^3 mean(w g v). */
void gated_norm_bwd(const float *y, const float *z, const float *w, const float *r, const float *g, float *gy,
                    float *gz, float *gw, long t0, long t1, long d, long gs) {
    float *sig = malloc(gs * sizeof(float)); /* sigmoid(z) of the group, from the first loop to the second */
    for (long t = t0; t < t1; t++) {
        const float *yt = y + t * d, *zt = z + t * d, *g_t = g + t * d;
        float *gyt = gy + t * d, *gzt = gz + t * d;
        for (long c0 = 0; c0 < d; c0 += gs) {
            float rr = r[t * (d / gs) + c0 / gs], qw = 0.0f;
#pragma omp simd reduction(+ : qw)
            for (long c = c0; c < c0 + gs; c++) {
                float s = sigmoid(zt[c]), q = g_t[c] * yt[c] * zt[c] * s;
                sig[c - c0] = s;
                gw[c] += q * rr;
                qw += q * w[c];
            }
            float coef = -qw * rr * rr * rr / (float)gs;
#pragma omp simd
            for (long c = c0; c < c0 + gs; c++) {
                float s = sig[c - c0], u = yt[c], sz = zt[c] * s;
                float dv = g_t[c] * w[c] * rr + u * sz * coef;
                gyt[c] = dv * sz;
                gzt[c] = dv * u * s * (1.0f + zt[c] * (1.0f - s)); /* silu'(z) = s (1 + z (1 - s)) */
            }
        }
    }
    free(sig);
}

/* The causal depthwise conv: K taps, weight wt as (K, ch) with tap K-1 the current step, on rows of
 * x (nb, L, ch); steps before 0 read as 0. Every channel's taps, activation and gradients run in
 * registers in one pass over a row: as separate passes per tap (a buffer row read and written K + 1
 * times) the conv took 2-3x the time of reading its inputs and writing its outputs. */
enum { MAX_TAPS = 8, MAX_PIECES = 8 }; /* checked by cpu_kernels.py */

/* Rows ahead that the conv asks the cache for: the hardware prefetcher alone left the loops waiting on
 * each new row of x and of the gradients. */
enum { PREFETCH_ROWS = 2 };

static inline void prefetch(const void *p, long bytes, int write) {
    for (long i = 0; i < bytes; i += 64) {
        if (write)
            __builtin_prefetch((const char *)p + i, 1, 3);
        else
            __builtin_prefetch((const char *)p + i, 0, 3);
    }
}

/* x's rows for the taps of step t (the zero row before the sequence start). */
static void tap_rows(const float *xb, const float *zeros, long t, long ch, long K, const float **rows) {
    for (long k = 0; k < K; k++) rows[k] = t - (K - 1) + k >= 0 ? xb + (t - (K - 1) + k) * ch : zeros;
}

static inline __attribute__((always_inline)) float conv_at(const float *const *rows, const float *wt,
                                                            const float *bias, long ch, long K, long c) {
    float pre = bias[c];
    for (long k = 0; k < K; k++) pre += wt[k * ch + c] * rows[k][c];
    return pre;
}

static inline __attribute__((always_inline)) void conv_fwd_rows(
    const float *x, const float *wt, const float *bias, float *const *outs, const long *widths, long n_out,
    long nb, long L, long ch, long K, long t0, long t1) {
    float *zeros = calloc(ch, sizeof(float));
    const float *bs = bias ? bias : zeros, *rows[MAX_TAPS];
    for (long b = 0; b < nb; b++) {
        for (long t = t0; t < t1; t++) {
            tap_rows(x + b * L * ch, zeros, t, ch, K, rows);
            if (t + PREFETCH_ROWS < t1) {
                prefetch(x + (b * L + t + PREFETCH_ROWS) * ch, ch * 4, 0);
                for (long i = 0; i < n_out; i++)
                    prefetch(outs[i] + (b * L + t + PREFETCH_ROWS) * widths[i], widths[i] * 4, 1);
            }
            for (long i = 0, c0 = 0; i < n_out; c0 += widths[i++]) {
                float *o = outs[i] + (b * L + t) * widths[i] - c0;
#pragma omp simd
                for (long c = c0; c < c0 + widths[i]; c++) {
                    float pre = conv_at(rows, wt, bs, ch, K, c);
                    o[c] = pre * sigmoid(pre);
                }
            }
        }
    }
    free(zeros);
}

/* silu(conv(x)) for steps [t0, t1) of every batch, written as n_out contiguous pieces (nb, L, widths[i])
 * that split the channels in order. bias may be NULL. Mamba2's 4 taps get their own copy, with the tap
 * loop unrolled (with a variable count the channel loop ran 5x slower). */
void conv_silu_fwd(const float *x, const float *wt, const float *bias, float *const *outs, const long *widths,
                   long n_out, long nb, long L, long ch, long K, long t0, long t1) {
    if (K == 4)
        conv_fwd_rows(x, wt, bias, outs, widths, n_out, nb, L, ch, 4, t0, t1);
    else
        conv_fwd_rows(x, wt, bias, outs, widths, n_out, nb, L, ch, K, t0, t1);
}

/* One step t of the backward: gp = the gradient before the activation at t (recomputing the conv),
 * into `ring` row t % K; with sums=1 its terms of the bias and weight gradients; with emit=1 the input
 * gradient of step t - K + 1, which needs gp of steps t - K + 1 .. t. Inlined per (sums, emit). */
static inline __attribute__((always_inline)) void conv_bwd_step(
    const float *const *rows, const float *wt, const float *bs, const float *const *g_t, const long *widths,
    long n_out, float *ring, float *gx_s, float *gwt, float *gb, long ch, long K, long t, int sums, int emit) {
    const float *gr[MAX_TAPS]; /* gr[k]: ring row of step t - k */
    for (long k = 0; k < K; k++) gr[k] = ring + ((t - k) % K) * ch;
    float *gp = ring + (t % K) * ch;
    for (long i = 0, c0 = 0; i < n_out; c0 += widths[i++]) {
        const float *g = g_t[i] - c0;
#pragma omp simd
        for (long c = c0; c < c0 + widths[i]; c++) {
            float pre = conv_at(rows, wt, bs, ch, K, c), s = sigmoid(pre);
            float v = g[c] * s * (1.0f + pre * (1.0f - s)); /* silu'(pre) = s (1 + pre (1 - s)) */
            gp[c] = v;
            if (sums) {
                gb[c] += v;
                for (long k = 0; k < K; k++) gwt[k * ch + c] += v * rows[k][c];
            }
            if (emit) { /* gx[s] = sum_k wt[k] gp[s + K - 1 - k], here gp[t - k] */
                float sum = wt[c] * v;
                for (long k = 1; k < K; k++) sum += wt[k * ch + c] * gr[k][c];
                gx_s[c] = sum;
            }
        }
    }
}

/* Gradients of conv_silu_fwd given the pieces' gradients: gx for steps [t0, t1), and the sums over those
 * steps of the weight (as (K, ch)) and bias gradients (gb is written even without a bias). Steps up to
 * t1 + K - 2 are recomputed for gx near the range's end; only [t0, t1) add to the sums. */
static inline __attribute__((always_inline)) void conv_bwd_rows(
    const float *x, const float *wt, const float *bias, const float *const *grads, const long *widths, long n_out,
    float *gx, float *gwt, float *gb, long nb, long L, long ch, long K, long t0, long t1) {
    float *ring = malloc(K * ch * sizeof(float)), *zeros = calloc(ch, sizeof(float));
    const float *bs = bias ? bias : zeros, *rows[MAX_TAPS], *g_t[MAX_PIECES];
    for (long b = 0; b < nb; b++) {
        const float *xb = x + b * L * ch;
        long end = t1 + K - 1 < L ? t1 + K - 1 : L;
        for (long t = t0; t < end; t++) {
            tap_rows(xb, zeros, t, ch, K, rows);
            for (long i = 0; i < n_out; i++) g_t[i] = grads[i] + (b * L + t) * widths[i];
            if (t + PREFETCH_ROWS < end) {
                prefetch(xb + (t + PREFETCH_ROWS) * ch, ch * 4, 0);
                for (long i = 0; i < n_out; i++) prefetch(g_t[i] + PREFETCH_ROWS * widths[i], widths[i] * 4, 0);
                if (t + PREFETCH_ROWS - (K - 1) >= t0)
                    prefetch(gx + (b * L + t + PREFETCH_ROWS - (K - 1)) * ch, ch * 4, 1);
            }
            int sums = t < t1, emit = t - (K - 1) >= t0;
            float *gx_s = emit ? gx + (b * L + t - (K - 1)) * ch : NULL;
#define STEP(sums, emit) conv_bwd_step(rows, wt, bs, g_t, widths, n_out, ring, gx_s, gwt, gb, ch, K, t, sums, emit)
            if (sums && emit) STEP(1, 1);
            else if (sums) STEP(1, 0);
            else if (emit) STEP(0, 1);
            else STEP(0, 0);
#undef STEP
        }
        for (long t = end; t < t1 + K - 1; t++) { /* past the sequence's end gp is 0 */
            memset(ring + (t % K) * ch, 0, ch * sizeof(float));
            long s = t - (K - 1);
            if (s < t0) continue;
            float *gxs = gx + (b * L + s) * ch;
            memset(gxs, 0, ch * sizeof(float));
            for (long k = 0; k < K; k++) {
                const float *gr = ring + ((t - k) % K) * ch, *wk = wt + k * ch;
#pragma omp simd
                for (long c = 0; c < ch; c++) gxs[c] += wk[c] * gr[c];
            }
        }
    }
    free(ring);
    free(zeros);
}

/* (conv_bwd_rows, with Mamba2's 4 taps unrolled as in the forward) */
void conv_silu_bwd(const float *x, const float *wt, const float *bias, const float *const *grads,
                   const long *widths, long n_out, float *gx, float *gwt, float *gb, long nb, long L, long ch,
                   long K, long t0, long t1) {
    if (K == 4)
        conv_bwd_rows(x, wt, bias, grads, widths, n_out, gx, gwt, gb, nb, L, ch, 4, t0, t1);
    else
        conv_bwd_rows(x, wt, bias, grads, widths, n_out, gx, gwt, gb, nb, L, ch, K, t0, t1);
}

/* ---- A scan block's input norm and gated residual, in either scan order ----
 * The backward-direction scan reads the video tokens last to first (text tokens stay in front). Reading
 * rows in that order here replaces two reordering copies per direction change (forward and backward). */

/* Source row of output row i of (nb * N) rows: per batch of N the first `keep` in place, the rest
 * reversed if asked. */
static inline long scan_row(long i, long N, long keep, int reverse) {
    long t = i % N;
    return reverse && t >= keep ? i - t + N - 1 - (t - keep) : i;
}

/* out row i = layer_norm(x row src(i)) * w + bias over d channels, rows [r0, r1) of nb * N; mean and
 * rstd (1 / std) per output row for the backward. */
void layer_norm_fwd(const float *x, const float *w, const float *bias, float *out, float *mean, float *rstd,
                    long N, long d, long keep, int reverse, float eps, long r0, long r1) {
    for (long i = r0; i < r1; i++) {
        const float *xr = x + scan_row(i, N, keep, reverse) * d;
        float *o = out + i * d, s = 0.0f, v = 0.0f;
#pragma omp simd reduction(+ : s)
        for (long c = 0; c < d; c++) s += xr[c];
        float mu = s / (float)d;
#pragma omp simd reduction(+ : v)
        for (long c = 0; c < d; c++) v += (xr[c] - mu) * (xr[c] - mu);
        float r = 1.0f / __builtin_sqrtf(v / (float)d + eps);
        mean[i] = mu;
        rstd[i] = r;
#pragma omp simd
        for (long c = 0; c < d; c++) o[c] = (xr[c] - mu) * r * w[c] + bias[c];
    }
}

/* Gradients of layer_norm_fwd given g (output rows): gx in source order; gw, gb summed over the rows.
 * With xh = (x - mean) rstd:  gx = rstd (g w - mean(g w) - xh mean(g w xh)). */
void layer_norm_bwd(const float *x, const float *w, const float *mean, const float *rstd, const float *g,
                    float *gx, float *gw, float *gb, long N, long d, long keep, int reverse, long r0, long r1) {
    for (long i = r0; i < r1; i++) {
        long src = scan_row(i, N, keep, reverse);
        const float *xr = x + src * d, *gr = g + i * d;
        float *gxr = gx + src * d, mu = mean[i], r = rstd[i], s1 = 0.0f, s2 = 0.0f;
#pragma omp simd reduction(+ : s1, s2)
        for (long c = 0; c < d; c++) {
            float xh = (xr[c] - mu) * r, gwc = gr[c] * w[c];
            s1 += gwc;
            s2 += gwc * xh;
            gw[c] += gr[c] * xh;
            gb[c] += gr[c];
        }
        s1 /= (float)d;
        s2 /= (float)d;
#pragma omp simd
        for (long c = 0; c < d; c++) gxr[c] = r * (gr[c] * w[c] - s1 - (xr[c] - mu) * r * s2);
    }
}

/* out row i = h row i + alpha * m row src(i): the gated residual of a scan's output m (in scan order). */
void gated_add_fwd(const float *h, const float *m, const float *alpha, float *out, long N, long d, long keep,
                   int reverse, long r0, long r1) {
    for (long i = r0; i < r1; i++) {
        const float *hr = h + i * d, *mr = m + scan_row(i, N, keep, reverse) * d;
        float *o = out + i * d;
#pragma omp simd
        for (long c = 0; c < d; c++) o[c] = hr[c] + alpha[c] * mr[c];
    }
}

/* Gradients of gated_add_fwd given g, but h's (g itself): gm in scan order, galpha summed over the rows. */
void gated_add_bwd(const float *g, const float *m, const float *alpha, float *gm, float *galpha, long N, long d,
                   long keep, int reverse, long r0, long r1) {
    for (long i = r0; i < r1; i++) {
        long src = scan_row(i, N, keep, reverse);
        const float *gr = g + i * d, *mr = m + src * d;
        float *gmr = gm + src * d;
#pragma omp simd
        for (long c = 0; c < d; c++) {
            gmr[c] = gr[c] * alpha[c];
            galpha[c] += gr[c] * mr[c];
        }
    }
}

/* ---- The MLP's GELU, tanh approximation: x (1 + tanh(u)) / 2 = x sigmoid(2u), u = k0 (x + k1 x^3) ----
 * PyTorch's CPU kernel for it took ~2 ns per element (9-13 ms per call at the benchmark's 9.5k x 512);
 * with the vector expf about 0.3. Elements [i0, i1). */
static const float GELU_K0 = 0.7978845608028654f, GELU_K1 = 0.044715f; /* sqrt(2 / pi) */

void gelu_tanh_fwd(const float *x, float *out, long i0, long i1) {
#pragma omp simd
    for (long i = i0; i < i1; i++) {
        float v = x[i];
        out[i] = v * sigmoid(2.0f * GELU_K0 * (v + GELU_K1 * v * v * v));
    }
}

/* gx = g d/dx [x s], s = sigmoid(2u): g (s + x s (1 - s) 2 u'), u' = k0 (1 + 3 k1 x^2). */
void gelu_tanh_bwd(const float *x, const float *g, float *gx, long i0, long i1) {
#pragma omp simd
    for (long i = i0; i < i1; i++) {
        float v = x[i], s = sigmoid(2.0f * GELU_K0 * (v + GELU_K1 * v * v * v));
        gx[i] = g[i] * (s + v * s * (1.0f - s) * 2.0f * GELU_K0 * (1.0f + 3.0f * GELU_K1 * v * v));
    }
}
