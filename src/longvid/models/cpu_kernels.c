/* Fused CPU code for the Mamba2 mixer, fp32, row-major (rows, channels): the gated norm, the causal conv
 * and the chunked SSD scan, forward and backward.
 *
 * In PyTorch each elementwise step of the gated norm and of the conv's activation and gradients is one
 * pass over memory; here each row is read once and every step runs on it in registers. Built and loaded
 * by cpu_kernels.py. Every function handles a range of rows (or of heads, for the scan) so that callers
 * can split the work across threads; sums over rows (weight and bias gradients) are added into buffers
 * the caller owns per thread.
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
    for (long t = t0; t < t1; t++) {
        const float *yt = y + t * d, *zt = z + t * d, *g_t = g + t * d;
        float *gyt = gy + t * d, *gzt = gz + t * d;
        for (long c0 = 0; c0 < d; c0 += gs) {
            float rr = r[t * (d / gs) + c0 / gs], qw = 0.0f;
#pragma omp simd reduction(+ : qw)
            for (long c = c0; c < c0 + gs; c++) {
                float q = g_t[c] * yt[c] * zt[c] * sigmoid(zt[c]);
                gw[c] += q * rr;
                qw += q * w[c];
            }
            float coef = -qw * rr * rr * rr / (float)gs;
#pragma omp simd
            for (long c = c0; c < c0 + gs; c++) {
                float s = sigmoid(zt[c]), u = yt[c], sz = zt[c] * s;
                float dv = g_t[c] * w[c] * rr + u * sz * coef;
                gyt[c] = dv * sz;
                gzt[c] = dv * u * s * (1.0f + zt[c] * (1.0f - s)); /* silu'(z) = s (1 + z (1 - s)) */
            }
        }
    }
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

/* ---- The chunked SSD scan (ssd.py), one pass over the chunks per head ----
 * A head's state (d_state x headdim, 32 KB at the seed's sizes) is carried from chunk to chunk in cache,
 * and every product of a chunk runs on blocks of l rows held in per-call buffers. As whole tensors
 * between MKL's batched products the states and the chunks' intermediate results were written out and
 * read back several times per step (about 200 MB per scan at 9.5k tokens), and the 64-row products ran
 * well below their in-cache speed. Work is split by heads within a group; B and C, shared by a group's
 * heads, and their product S = C B^T are loaded once per chunk for all the heads a call runs. */

#pragma omp declare simd notinbranch
extern float exp2f(float);

/* The products below are small (64-128 on a side) and run from cache: a register tile of TILE_ROWS rows
 * x two vectors of C, one copy of the tile's loop per row count, so that all of it is unrolled into
 * registers. 16-float vectors where the CPU has AVX-512, 8 otherwise (then the 12 accumulators still
 * fit AVX2's 16 registers). One core of the Xeon above, 64 x 64 x 64 products from cache: 160-170
 * GFLOP/s (MKL's sgemm 109; this code with the row count a variable, 62). */
#ifdef __AVX512F__
enum { VEC = 16 };
#else
enum { VEC = 8 };
#endif
typedef float vf __attribute__((vector_size(VEC * 4), aligned(4))); /* unaligned loads and stores */
enum { TILE_ROWS = 6, TILE_COLS = 2 * VEC };

/* C's rows x TILE_COLS tile (+)= A B with A's element (r, p) at A[r * ars + p * acs]. Inlined with rows
 * a constant, so that every loop over r is unrolled into registers. */
static inline __attribute__((always_inline)) void tile(int rows, long k, const float *A, long ars, long acs,
                                                     const float *B, long ldb, float *C, long ldc, int accumulate) {
    vf acc[TILE_ROWS][2];
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < 2; v++) acc[r][v] = accumulate ? *(const vf *)(C + r * ldc + v * VEC) : (vf){0};
    for (long p = 0; p < k; p++) {
        vf b0 = *(const vf *)(B + p * ldb), b1 = *(const vf *)(B + p * ldb + VEC);
        for (int r = 0; r < rows; r++) {
            float av = A[r * ars + p * acs];
            acc[r][0] += av * b0;
            acc[r][1] += av * b1;
        }
    }
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < 2; v++) *(vf *)(C + r * ldc + v * VEC) = acc[r][v];
}

/* C (m x n, row stride ldc) = A B, or += with accumulate. A's element (i, j) is A[i * ars + j * acs],
 * so A may be in either layout; B is (k x n) row-major, row stride ldb. Columns past the last whole
 * tile go through plain loops. */
static void gemm(long m, long n, long k, const float *A, long ars, long acs, const float *B, long ldb, float *C,
                 long ldc, int accumulate) {
    long tiled = n - n % TILE_COLS;
    for (long i = 0; i < m; i += TILE_ROWS) {
        int rows = m - i < TILE_ROWS ? (int)(m - i) : TILE_ROWS;
        const float *Ai = A + i * ars;
        for (long j = 0; j < tiled; j += TILE_COLS) {
            float *Ct = C + i * ldc + j;
            switch (rows) { /* each case its own unrolled copy */
            case 6: tile(6, k, Ai, ars, acs, B + j, ldb, Ct, ldc, accumulate); break;
            case 5: tile(5, k, Ai, ars, acs, B + j, ldb, Ct, ldc, accumulate); break;
            case 4: tile(4, k, Ai, ars, acs, B + j, ldb, Ct, ldc, accumulate); break;
            case 3: tile(3, k, Ai, ars, acs, B + j, ldb, Ct, ldc, accumulate); break;
            case 2: tile(2, k, Ai, ars, acs, B + j, ldb, Ct, ldc, accumulate); break;
            default: tile(1, k, Ai, ars, acs, B + j, ldb, Ct, ldc, accumulate);
            }
        }
    }
    if (tiled == n) return;
    for (long i = 0; i < m; i++) {
        float *ci = C + i * ldc;
        if (!accumulate) memset(ci + tiled, 0, (n - tiled) * sizeof(float));
        for (long p = 0; p < k; p++) {
            float av = A[i * ars + p * acs];
            const float *bp = B + p * ldb;
#pragma omp simd
            for (long j = tiled; j < n; j++) ci[j] += av * bp[j];
        }
    }
}

/* One (l x l) block: decay = 2^clamp(a_r - a_s, floor, 0) for s <= r, else 0 (kept where decay is not
 * NULL); M = decay * S. */
static void decay_block(const float *ah, const float *s_, long l, float floor_, float *decay, float *M) {
    for (long r = 0; r < l; r++) {
        float ar = ah[r];
#pragma omp simd
        for (long s = 0; s < l; s++) {
            float v = ar - ah[s];
            v = v < floor_ ? floor_ : v;
            v = s <= r ? exp2f(v > 0.0f ? 0.0f : v) : 0.0f;
            if (decay) decay[r * l + s] = v;
            M[r * l + s] = v * s_[r * l + s];
        }
    }
}

/* Rows [k l, k l + l) of the w-wide slot `slot` of a (nb, L, slots, w) tensor, batch b: where the chunk is
 * whole, a pointer into the tensor (row stride slots * w); else a copy into buf (row stride w) with the
 * rows at or past L zero. *stride gets the row stride. */
static const float *chunk_rows(const float *src, long b, long k, long L, long l, long slots, long slot, long w,
                               float *buf, long *stride) {
    if (k * l + l <= L) {
        *stride = slots * w;
        return src + ((b * L + k * l) * slots + slot) * w;
    }
    for (long r = 0; r < l; r++) {
        long t = k * l + r;
        if (t < L)
            memcpy(buf + r * w, src + ((b * L + t) * slots + slot) * w, w * sizeof(float));
        else
            memset(buf + r * w, 0, w * sizeof(float));
    }
    *stride = w;
    return buf;
}

#ifdef __AVX__
#include <immintrin.h>

/* One 8 x 8 block: rows of src (stride ss) to columns of dst (stride ds), in registers. */
static inline void transpose8(const float *src, long ss, float *dst, long ds) {
    __m256 r[8], t[8], u[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + i * ss);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; i++) {
        _mm256_storeu_ps(dst + i * ds, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
        _mm256_storeu_ps(dst + (i + 4) * ds, _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
    }
}
#endif

/* dst (cols x rows, contiguous) = src (rows x cols, row stride ss) transposed. By 8 x 8 blocks in
 * registers where the sizes allow (element by element, the transposes took a third of the forward's
 * time), else by 16 x 16 blocks, so that rows are read and written a cache line at a time. */
static void transpose(const float *src, long rows, long cols, long ss, float *dst) {
#ifdef __AVX__
    if (rows % 8 == 0 && cols % 8 == 0) {
        for (long i = 0; i < rows; i += 8)
            for (long j = 0; j < cols; j += 8) transpose8(src + i * ss + j, ss, dst + j * rows + i, rows);
        return;
    }
#endif
    for (long i0 = 0; i0 < rows; i0 += 16)
        for (long j0 = 0; j0 < cols; j0 += 16)
            for (long j = j0; j < (j0 + 16 < cols ? j0 + 16 : cols); j++)
                for (long i = i0; i < (i0 + 16 < rows ? i0 + 16 : rows); i++) dst[j * rows + i] = src[i * ss + j];
}

static inline float floored_exp2(float v, float floor_) { return exp2f(v < floor_ ? floor_ : v); }

/* One chunk of one head: X = dt x and XE = X w_end in rows (l x p, zero past L), w_end = 2^(a_last - a)
 * and ea = 2^a per step (l), and the chunk's total decay 2^a_last, returned. */
static float chunk_inputs(const float *x, const float *dt, const float *ah, long b, long k, long L, long l,
                          long nh, long hh, long p, float floor_, float *X, float *XE, float *w_end, float *ea) {
    float last = ah[l - 1];
#pragma omp simd
    for (long r = 0; r < l; r++) {
        w_end[r] = floored_exp2(last - ah[r], floor_);
        ea[r] = floored_exp2(ah[r], floor_);
    }
    for (long r = 0; r < l; r++) {
        long t = k * l + r;
        if (t >= L) {
            memset(X + r * p, 0, p * sizeof(float));
            memset(XE + r * p, 0, p * sizeof(float));
            continue;
        }
        long row = (b * L + t) * nh + hh;
        const float *xr = x + row * p;
        float d = dt[row], de = d * w_end[r];
#pragma omp simd
        for (long i = 0; i < p; i++) {
            X[r * p + i] = d * xr[i];
            XE[r * p + i] = de * xr[i];
        }
    }
    return floored_exp2(last, floor_);
}

static void scale(float *v, long m, float s) {
#pragma omp simd
    for (long i = 0; i < m; i++) v[i] *= s;
}

enum { SCAN_BUFFERS = 16 };

/* Per-call scratch, one allocation (free bufs[0]): SCAN_BUFFERS blocks of the largest size any of them
 * takes, then in bufs[SCAN_BUFFERS] room for `heads` states (n x p). */
static void scratch(long l, long p, long n, long heads, float **bufs) {
    long big = l * l > l * n ? l * l : l * n;
    big = big > n * p ? big : n * p;
    float *mem = malloc((SCAN_BUFFERS * big + heads * n * p) * sizeof(float));
    for (int i = 0; i <= SCAN_BUFFERS; i++) bufs[i] = mem + i * big;
}

/* Forward for heads [h0, h1) of every group and batch. x (nb, L, nh, p), dt (nb, L, nh), a (nb, c, nh, l)
 * in log2 units, B and C (nb, L, g, n), Ds (nh, p) or NULL: the skip term -> y (nb, L, nh, p) with D x
 * added; for the backward S = C B^T per chunk (nb, g,
 * c, l, l) and hprev (nb, nh, c, p, n), the state before each chunk; final (nb, nh, p, n). Each chunk's
 * state update writes the next slot of hprev (or final), which stays in cache for the next chunk. Whole
 * chunks read B and C, and write y, in place; a padded last chunk goes through copies. */
void ssd_scan_fwd(const float *x, const float *dt, const float *a, const float *B, const float *C, const float *Ds,
                  float *y, float *S, float *hprev, float *final, long nb, long L, long c, long g, long hg, long l,
                  long p, long n, float floor_, long h0, long h1) {
    long nh = g * hg;
    float *f[SCAN_BUFFERS + 1];
    scratch(l, p, n, 0, f);
    float *Bbuf = f[0], *Cbuf = f[1], *BT = f[2], *M = f[3], *X = f[4], *XE = f[5], *Ybuf = f[6];
    float *Ce = f[7], *w_end = f[8], *ea = f[9], *HT = f[10], *Sbuf = f[11];
    for (long b = 0; b < nb; b++) {
        for (long gi = 0; gi < g; gi++) {
            for (long k = 0; k < c; k++) {
                long real = L - k * l < l ? L - k * l : l, bs, cs;
                const float *Bk = chunk_rows(B, b, k, L, l, g, gi, n, Bbuf, &bs);
                const float *Ck = chunk_rows(C, b, k, L, l, g, gi, n, Cbuf, &cs);
                /* every call needs S; the one with the group's first head keeps it */
                float *Sk = h0 == 0 ? S + ((b * g + gi) * c + k) * l * l : Sbuf;
                transpose(Bk, l, n, bs, BT);
                gemm(l, l, n, Ck, cs, 1, BT, l, Sk, l, 0); /* S = C B^T */
                for (long j = h0; j < h1; j++) {
                    long hh = gi * hg + j;
                    float *h = hprev + ((b * nh + hh) * c + k) * p * n; /* (p x n) */
                    float *h_next = k + 1 < c ? h + p * n : final + (b * nh + hh) * p * n;
                    const float *ah = a + ((b * c + k) * nh + hh) * l;
                    float *Y = real == l ? y + ((b * L + k * l) * nh + hh) * p : Ybuf;
                    long ys = real == l ? nh * p : p;
                    float e = chunk_inputs(x, dt, ah, b, k, L, l, nh, hh, p, floor_, X, XE, w_end, ea);
                    decay_block(ah, Sk, l, floor_, NULL, M);
                    gemm(l, p, l, M, l, 1, X, p, Y, ys, 0); /* intra-chunk: M X */
                    if (k > 0) { /* inter-chunk: ea C h^T */
                        for (long r = 0; r < l; r++)
#pragma omp simd
                            for (long i = 0; i < n; i++) Ce[r * n + i] = Ck[r * cs + i] * ea[r];
                        transpose(h, p, n, n, HT);
                        gemm(l, p, n, Ce, n, 1, HT, p, Y, ys, 1);
                    }
                    if (Ds || real < l) /* y = Y + D x, Y in place or in a copy */
                        for (long r = 0; r < real; r++) {
                            long row = (b * L + k * l + r) * nh + hh;
                            const float *Yr = Y + r * ys, *xr = x + row * p, *dh = Ds ? Ds + hh * p : NULL;
                            float *yr = y + row * p;
#pragma omp simd
                            for (long i = 0; i < p; i++) yr[i] = Yr[i] + (dh ? dh[i] * xr[i] : 0.0f);
                        }
                    if (k == 0) /* no state before the first chunk */
                        memset(h, 0, p * n * sizeof(float));
                    else
#pragma omp simd
                        for (long i = 0; i < p * n; i++) h_next[i] = e * h[i];
                    gemm(p, n, l, XE, 1, p, Bk, bs, h_next, n, k > 0); /* h = e h + XE^T B */
                }
            }
        }
    }
    free(f[0]);
}

/* Backward of ssd_scan_fwd, chunks in reverse with each head's state gradient (n x p) carried along:
 * gy (nb, L, nh, p), gfinal (nb, nh, p, n) or NULL -> gx (nb, L, nh, p) and gdt (nb, L, nh) written for
 * heads [h0, h1); ga (nb, c, nh, l), zeroed by the caller, the gradient of a in natural units (its
 * cumulative sum is the caller's); gB, gC (nb, L, g, n) written whole, as sums over heads [h0, h1); gDs
 * (nh, p; with Ds) added into. With X = dt x, per chunk:
 *   state    h_k = e h_{k-1} + B^T XE:  gXE = B dh, gB += XE dh^T, g_e = <dh, h_{k-1}>, gw = <gXE, XE>
 *   inter    y += ea C h_{k-1}:          G1 = dy ea, gC += G1 h_{k-1}, ga += <C, G1 h_{k-1}>,
 *                                        dh_{k-1} = e dh_k + C^T G1
 *   intra    y += M X, M = decay * S:    gX = M^T dy + gXE w_end, P = dy X^T, gS = sum over heads of
 *                                        P decay; with E = P decay S, ga += row sums - column sums of E */
void ssd_scan_bwd(const float *x, const float *dt, const float *a, const float *B, const float *C, const float *Ds,
                  const float *S, const float *hprev, const float *gy, const float *gfinal, float *gx, float *gdt,
                  float *ga, float *gB, float *gC, float *gDs, long nb, long L, long c, long g, long hg, long l,
                  long p, long n, float floor_, long h0, long h1) {
    long nh = g * hg, ll = l * l;
    float *f[SCAN_BUFFERS + 1];
    scratch(l, p, n, h1 - h0, f);
    float *Bbuf = f[0], *Cbuf = f[1], *GYbuf = f[2], *D = f[3], *M = f[4], *X = f[5], *XE = f[6], *G = f[7];
    float *GXE = f[8], *dH = f[9], *T = f[10], *gBk = f[11], *gCk = f[12], *gS = f[13], *w_end = f[14], *ea = f[15];
    float *DH = f[SCAN_BUFFERS]; /* the heads' state gradients */
    float *P = T, *XT = dH, *G1 = G; /* P and T, XT and dH, G1 and G are never live at once */
    for (long b = 0; b < nb; b++) {
        for (long gi = 0; gi < g; gi++) {
            for (long j = h0; j < h1; j++) {
                float *dhT = DH + (j - h0) * n * p;
                if (gfinal)
                    transpose(gfinal + (b * nh + gi * hg + j) * p * n, p, n, n, dhT);
                else
                    memset(dhT, 0, n * p * sizeof(float));
            }
            for (long k = c - 1; k >= 0; k--) {
                long real = L - k * l < l ? L - k * l : l, bs, cs, gs;
                const float *Bk = chunk_rows(B, b, k, L, l, g, gi, n, Bbuf, &bs);
                const float *Ck = chunk_rows(C, b, k, L, l, g, gi, n, Cbuf, &cs);
                const float *Sk = S + ((b * g + gi) * c + k) * ll;
                memset(gS, 0, ll * sizeof(float));
                memset(gBk, 0, l * n * sizeof(float));
                memset(gCk, 0, l * n * sizeof(float));
                for (long j = h0; j < h1; j++) {
                    long hh = gi * hg + j;
                    float *dhT = DH + (j - h0) * n * p, *gah = ga + ((b * c + k) * nh + hh) * l;
                    const float *ah = a + ((b * c + k) * nh + hh) * l;
                    const float *hp = hprev + ((b * nh + hh) * c + k) * p * n;
                    float e = chunk_inputs(x, dt, ah, b, k, L, l, nh, hh, p, floor_, X, XE, w_end, ea);
                    const float *GY = chunk_rows(gy, b, k, L, l, nh, hh, p, GYbuf, &gs);

                    /* the state after this chunk */
                    gemm(l, p, n, Bk, bs, 1, dhT, p, GXE, p, 0);
                    transpose(dhT, n, p, p, dH);
                    gemm(l, n, p, XE, p, 1, dH, n, gBk, n, 1);
                    float g_e = 0.0f, gw_sum = 0.0f;
#pragma omp simd reduction(+ : g_e)
                    for (long i = 0; i < n * p; i++) g_e += dH[i] * hp[i];
                    for (long r = 0; r < l; r++) {
                        float gw = 0.0f;
#pragma omp simd reduction(+ : gw)
                        for (long i = 0; i < p; i++) gw += GXE[r * p + i] * XE[r * p + i];
                        gah[r] -= gw;
                        gw_sum += gw;
                    }
                    gah[l - 1] += gw_sum + (k > 0 ? g_e * e : 0.0f);

                    if (k > 0) { /* the state before it, through the inter-chunk term */
                        for (long r = 0; r < l; r++)
#pragma omp simd
                            for (long i = 0; i < p; i++) G1[r * p + i] = GY[r * gs + i] * ea[r];
                        gemm(l, n, p, G1, p, 1, hp, n, T, n, 0);
                        for (long r = 0; r < l; r++) {
                            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                            for (long i = 0; i < n; i++) {
                                dot += Ck[r * cs + i] * T[r * n + i];
                                gCk[r * n + i] += T[r * n + i];
                            }
                            gah[r] += dot;
                        }
                        scale(dhT, n * p, e);
                        gemm(n, p, l, Ck, 1, cs, G1, p, dhT, p, 1);
                    }

                    /* intra-chunk */
                    decay_block(ah, Sk, l, floor_, D, M);
                    gemm(l, p, l, M, 1, l, GY, gs, G, p, 0); /* M^T dy */
                    const float *dh = Ds ? Ds + hh * p : NULL;
                    float *gdh = gDs ? gDs + hh * p : NULL;
                    for (long r = 0; r < real; r++) {
                        long row = (b * L + k * l + r) * nh + hh;
                        const float *xr = x + row * p, *gyr = GY + r * gs;
                        float *gxr = gx + row * p, d = dt[row], w = w_end[r], dx = 0.0f;
#pragma omp simd reduction(+ : dx)
                        for (long i = 0; i < p; i++) {
                            float gX = G[r * p + i] + GXE[r * p + i] * w;
                            dx += xr[i] * gX;
                            gxr[i] = d * gX + (dh ? dh[i] * gyr[i] : 0.0f);
                        }
                        gdt[row] = dx;
                        if (gdh)
#pragma omp simd
                            for (long i = 0; i < p; i++) gdh[i] += gyr[i] * xr[i];
                    }
                    transpose(X, l, p, p, XT);
                    gemm(l, l, p, GY, gs, 1, XT, l, P, l, 0); /* dy X^T */
                    for (long r = 0; r < l; r++) {
                        float row = 0.0f;
#pragma omp simd reduction(+ : row)
                        for (long s = 0; s <= r; s++) {
                            float v = P[r * l + s] * D[r * l + s], e2 = v * Sk[r * l + s];
                            gS[r * l + s] += v;
                            row += e2;
                            gah[s] -= e2;
                        }
                        gah[r] += row;
                    }
                }
                gemm(l, n, l, gS, l, 1, Bk, bs, gCk, n, 1); /* S = C B^T: gC += gS B, gB += gS^T C */
                gemm(l, n, l, gS, 1, l, Ck, cs, gBk, n, 1);
                for (long r = 0; r < real; r++) {
                    memcpy(gB + ((b * L + k * l + r) * g + gi) * n, gBk + r * n, n * sizeof(float));
                    memcpy(gC + ((b * L + k * l + r) * g + gi) * n, gCk + r * n, n * sizeof(float));
                }
            }
        }
    }
    free(f[0]);
}
