/* Fused CPU code for the Mamba2 mixer: the chunked SSD scan, forward and backward, fp32 (see the section
 * comment below). Built together with cpu_rows.c by cpu_kernels.py. */
#include <stdlib.h>
#include <string.h>

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

/* What a product may skip. The intra-chunk products involve the causal (lower triangular) l x l blocks:
 * A_LOWER, A is lower triangular (zero above its diagonal, as stored): row i's sum stops at column i;
 * A_UPPER, A is upper triangular (a transposed lower one): row i's sum starts at column i;
 * C_LOWER, only C's lower triangle is wanted: tiles wholly above the diagonal are not computed (their
 * contents are then undefined). In whole tiles of TILE_ROWS rows, so about a third to a half of those
 * products' work is skipped. */
enum shape { FULL, A_LOWER, A_UPPER, C_LOWER };

/* C (m x n, row stride ldc) = A B, or += with accumulate. A's element (i, j) is A[i * ars + j * acs],
 * so A may be in either layout; B is (k x n) row-major, row stride ldb. Columns past the last whole
 * tile go through plain loops (over all of k). */
static void gemm(enum shape shape, long m, long n, long k, const float *A, long ars, long acs, const float *B,
                 long ldb, float *C, long ldc, int accumulate) {
    long tiled = n - n % TILE_COLS;
    for (long i = 0; i < m; i += TILE_ROWS) {
        int rows = m - i < TILE_ROWS ? (int)(m - i) : TILE_ROWS;
        long k0 = shape == A_UPPER ? (i < k ? i : k) : 0, k1 = shape == A_LOWER && i + rows < k ? i + rows : k;
        const float *Ai = A + i * ars + k0 * acs, *Bk = B + k0 * ldb;
        for (long j = 0; j < tiled && (shape != C_LOWER || j < i + rows); j += TILE_COLS) {
            float *Ct = C + i * ldc + j;
            long kk = k1 - k0;
            switch (rows) { /* each case its own unrolled copy */
            case 6: tile(6, kk, Ai, ars, acs, Bk + j, ldb, Ct, ldc, accumulate); break;
            case 5: tile(5, kk, Ai, ars, acs, Bk + j, ldb, Ct, ldc, accumulate); break;
            case 4: tile(4, kk, Ai, ars, acs, Bk + j, ldb, Ct, ldc, accumulate); break;
            case 3: tile(3, kk, Ai, ars, acs, Bk + j, ldb, Ct, ldc, accumulate); break;
            case 2: tile(2, kk, Ai, ars, acs, Bk + j, ldb, Ct, ldc, accumulate); break;
            default: tile(1, kk, Ai, ars, acs, Bk + j, ldb, Ct, ldc, accumulate);
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
 * NULL); M = decay * S, lower triangular (S is read on and below its diagonal only). */
static void decay_block(const float *ah, const float *s_, long l, float floor_, float *decay, float *M) {
    for (long r = 0; r < l; r++) {
        float ar = ah[r];
#pragma omp simd
        for (long s = 0; s < l; s++) {
            float v = ar - ah[s];
            v = v < floor_ ? floor_ : v;
            v = s <= r ? exp2f(v > 0.0f ? 0.0f : v) : 0.0f;
            if (decay) decay[r * l + s] = v;
            M[r * l + s] = s <= r ? v * s_[r * l + s] : 0.0f;
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
                gemm(C_LOWER, l, l, n, Ck, cs, 1, BT, l, Sk, l, 0); /* S = C B^T */
                for (long j = h0; j < h1; j++) {
                    long hh = gi * hg + j;
                    float *h = hprev + ((b * nh + hh) * c + k) * p * n; /* (p x n) */
                    float *h_next = k + 1 < c ? h + p * n : final + (b * nh + hh) * p * n;
                    const float *ah = a + ((b * c + k) * nh + hh) * l;
                    float *Y = real == l ? y + ((b * L + k * l) * nh + hh) * p : Ybuf;
                    long ys = real == l ? nh * p : p;
                    float e = chunk_inputs(x, dt, ah, b, k, L, l, nh, hh, p, floor_, X, XE, w_end, ea);
                    decay_block(ah, Sk, l, floor_, NULL, M);
                    gemm(A_LOWER, l, p, l, M, l, 1, X, p, Y, ys, 0); /* intra-chunk: M X */
                    if (k > 0) { /* inter-chunk: ea C h^T */
                        for (long r = 0; r < l; r++)
#pragma omp simd
                            for (long i = 0; i < n; i++) Ce[r * n + i] = Ck[r * cs + i] * ea[r];
                        transpose(h, p, n, n, HT);
                        gemm(FULL, l, p, n, Ce, n, 1, HT, p, Y, ys, 1);
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
                    gemm(FULL, p, n, l, XE, 1, p, Bk, bs, h_next, n, k > 0); /* h = e h + XE^T B */
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
                    gemm(FULL, l, p, n, Bk, bs, 1, dhT, p, GXE, p, 0);
                    transpose(dhT, n, p, p, dH);
                    gemm(FULL, l, n, p, XE, p, 1, dH, n, gBk, n, 1);
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
                        gemm(FULL, l, n, p, G1, p, 1, hp, n, T, n, 0);
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
                        gemm(FULL, n, p, l, Ck, 1, cs, G1, p, dhT, p, 1);
                    }

                    /* intra-chunk */
                    decay_block(ah, Sk, l, floor_, D, M);
                    gemm(A_UPPER, l, p, l, M, 1, l, GY, gs, G, p, 0); /* M^T dy */
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
                    gemm(C_LOWER, l, l, p, GY, gs, 1, XT, l, P, l, 0); /* dy X^T */
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
                gemm(A_LOWER, l, n, l, gS, l, 1, Bk, bs, gCk, n, 1); /* S = C B^T: gC += gS B, gB += gS^T C */
                gemm(A_UPPER, l, n, l, gS, 1, l, Ck, cs, gBk, n, 1);
                for (long r = 0; r < real; r++) {
                    memcpy(gB + ((b * L + k * l + r) * g + gi) * n, gBk + r * n, n * sizeof(float));
                    memcpy(gC + ((b * L + k * l + r) * g + gi) * n, gCk + r * n, n * sizeof(float));
                }
            }
        }
    }
    free(f[0]);
}
