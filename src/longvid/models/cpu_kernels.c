/* Fused CPU loops for the memory-bound parts of the Mamba2 mixer, fp32, row-major (rows, channels).
 *
 * In PyTorch each elementwise step of the gated norm and of the conv's activation and gradients is one
 * pass over memory; here each row is read once and every step runs on it in registers. Built and loaded
 * by cpu_kernels.py. Every function handles the rows [t0, t1) so that callers can split rows across
 * threads; sums over rows (weight and bias gradients) are added into buffers the caller owns per thread.
 */
#include <stdlib.h>
#include <string.h>

/* glibc's vector expf (libmvec), so that the channel loops vectorise: its math.h declares it only
 * under -ffast-math, which would also drop NaN and infinity semantics. */
#pragma omp declare simd notinbranch
extern float expf(float);

static inline float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }

/* out = rmsnorm((y + D x) * silu(z)) * w per group of gs channels; r = 1 / rms per row and group. */
void gated_norm_fwd(const float *y, const float *x, const float *D, const float *z, const float *w,
                    float *out, float *r, long t0, long t1, long d, long gs, float eps) {
    for (long t = t0; t < t1; t++) {
        const float *yt = y + t * d, *xt = x + t * d, *zt = z + t * d;
        float *ot = out + t * d;
        for (long c0 = 0; c0 < d; c0 += gs) {
            float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
            for (long c = c0; c < c0 + gs; c++) {
                float v = (yt[c] + D[c] * xt[c]) * zt[c] * sigmoid(zt[c]);
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

/* Gradients of gated_norm_fwd given g = d loss / d out: gy, gx, gz per row; gw, gD summed over rows.
 * With u = y + D x, v = u silu(z), out = v r w:  dv = r w g - v r^3 mean(w g v). */
void gated_norm_bwd(const float *y, const float *x, const float *D, const float *z, const float *w,
                    const float *r, const float *g, float *gy, float *gx, float *gz, float *gw, float *gD,
                    long t0, long t1, long d, long gs) {
    for (long t = t0; t < t1; t++) {
        const float *yt = y + t * d, *xt = x + t * d, *zt = z + t * d, *g_t = g + t * d;
        float *gyt = gy + t * d, *gxt = gx + t * d, *gzt = gz + t * d;
        for (long c0 = 0; c0 < d; c0 += gs) {
            float rr = r[t * (d / gs) + c0 / gs], qw = 0.0f;
#pragma omp simd reduction(+ : qw)
            for (long c = c0; c < c0 + gs; c++) {
                float q = g_t[c] * (yt[c] + D[c] * xt[c]) * zt[c] * sigmoid(zt[c]);
                gw[c] += q * rr;
                qw += q * w[c];
            }
            float coef = -qw * rr * rr * rr / (float)gs;
#pragma omp simd
            for (long c = c0; c < c0 + gs; c++) {
                float s = sigmoid(zt[c]), u = yt[c] + D[c] * xt[c], sz = zt[c] * s;
                float dv = g_t[c] * w[c] * rr + u * sz * coef;
                float gu = dv * sz;
                gyt[c] = gu;
                gxt[c] = gu * D[c];
                gD[c] += gu * xt[c];
                gzt[c] = dv * u * s * (1.0f + zt[c] * (1.0f - s)); /* silu'(z) = s (1 + z (1 - s)) */
            }
        }
    }
}

/* Causal depthwise conv (K taps, weight wt as (K, ch): tap K-1 is the current step) before the
 * activation, row t of batch b: bias + sum_k wt[k] x[t - (K-1) + k], earlier steps than 0 being 0. */
static void conv_row(const float *xb, const float *wt, const float *bias, long t, long ch, long K, float *pre) {
#pragma omp simd
    for (long c = 0; c < ch; c++) pre[c] = bias ? bias[c] : 0.0f;
    for (long k = (t >= K - 1 ? 0 : K - 1 - t); k < K; k++) {
        const float *xs = xb + (t - (K - 1) + k) * ch, *wk = wt + k * ch;
#pragma omp simd
        for (long c = 0; c < ch; c++) pre[c] += wk[c] * xs[c];
    }
}

/* silu(conv(x)) of x (nb, L, ch) for steps [t0, t1) of every batch, written as n_out contiguous pieces
 * (nb, L, widths[i]) that split the channels in order. */
void conv_silu_fwd(const float *x, const float *wt, const float *bias, float *const *outs, const long *widths,
                   long n_out, long nb, long L, long ch, long K, long t0, long t1) {
    float *pre = malloc(ch * sizeof(float));
    for (long b = 0; b < nb; b++) {
        for (long t = t0; t < t1; t++) {
            conv_row(x + b * L * ch, wt, bias, t, ch, K, pre);
            for (long i = 0, c0 = 0; i < n_out; c0 += widths[i++]) {
                float *o = outs[i] + (b * L + t) * widths[i];
#pragma omp simd
                for (long c = 0; c < widths[i]; c++) o[c] = pre[c0 + c] * sigmoid(pre[c0 + c]);
            }
        }
    }
    free(pre);
}

/* Gradients of conv_silu_fwd given the pieces' gradients: gx for steps [t0, t1), and the sums over
 * those steps of the weight (as (K, ch)) and bias gradients. The gradient before the activation,
 * gpre, is recomputed row by row into a ring of the last K rows: gx[s] = sum_k wt[k] gpre[s+K-1-k]. */
void conv_silu_bwd(const float *x, const float *wt, const float *bias, const float *const *grads,
                   const long *widths, long n_out, float *gx, float *gwt, float *gb, long nb, long L, long ch,
                   long K, long t0, long t1) {
    float *ring = malloc(K * ch * sizeof(float)), *pre = malloc(ch * sizeof(float));
    for (long b = 0; b < nb; b++) {
        const float *xb = x + b * L * ch;
        for (long t = t0; t < t1 + K - 1; t++) {
            float *gp = ring + (t % K) * ch;
            if (t < L) {
                conv_row(xb, wt, bias, t, ch, K, pre);
                for (long i = 0, c0 = 0; i < n_out; c0 += widths[i++]) {
                    const float *g = grads[i] + (b * L + t) * widths[i];
#pragma omp simd
                    for (long c = 0; c < widths[i]; c++) {
                        float s = sigmoid(pre[c0 + c]);
                        gp[c0 + c] = g[c] * s * (1.0f + pre[c0 + c] * (1.0f - s));
                    }
                }
            } else {
                memset(gp, 0, ch * sizeof(float)); /* past the sequence's end */
            }
            if (t < t1) {
#pragma omp simd
                for (long c = 0; c < ch; c++) gb[c] += gp[c];
                for (long k = (t >= K - 1 ? 0 : K - 1 - t); k < K; k++) {
                    const float *xs = xb + (t - (K - 1) + k) * ch;
                    float *gwk = gwt + k * ch;
#pragma omp simd
                    for (long c = 0; c < ch; c++) gwk[c] += gp[c] * xs[c];
                }
            }
            long s = t - (K - 1); /* gpre rows s .. t are in the ring now */
            if (s >= t0) {
                float *gxs = gx + (b * L + s) * ch;
                memset(gxs, 0, ch * sizeof(float));
                for (long k = 0; k < K; k++) {
                    const float *gr = ring + ((t - k) % K) * ch, *wk = wt + k * ch;
#pragma omp simd
                    for (long c = 0; c < ch; c++) gxs[c] += wk[c] * gr[c];
                }
            }
        }
    }
    free(ring);
    free(pre);
}

/* ---- The chunked SSD scan (ssd.py): its loops between the matrix products ---- */

/* State hand-over, in place: h[k] += e[k] h[k-1] over chunks k, for the (batch, head) pairs [j0, j1).
 * states (nb, c, nh, m) with m = headdim * d_state; e (nb, c, nh): each chunk's total decay. */
void ssd_handover_fwd(float *states, const float *e, long nb, long c, long nh, long m, long j0, long j1) {
    for (long j = j0; j < j1; j++) {
        long b = j / nh, hh = j % nh;
        for (long k = 1; k < c; k++) {
            float *dst = states + ((b * c + k) * nh + hh) * m;
            const float *src = dst - nh * m;
            float s = e[(b * c + k) * nh + hh];
#pragma omp simd
            for (long i = 0; i < m; i++) dst[i] += s * src[i];
        }
    }
}

/* Its backward, in place on G (the gradients of the states after each chunk, own parts in): from the
 * last chunk back, g_e[k] = <G[k], h[k-1]> and G[k-1] += e[k] G[k]. g_e (nb, c, nh); chunk 0 left alone. */
void ssd_handover_bwd(float *G, const float *states, const float *e, float *g_e, long nb, long c, long nh,
                      long m, long j0, long j1) {
    for (long j = j0; j < j1; j++) {
        long b = j / nh, hh = j % nh;
        for (long k = c - 1; k > 0; k--) {
            long at = (b * c + k) * nh + hh;
            float *gk = G + at * m, *gprev = gk - nh * m;
            const float *hprev = states + (at - nh) * m;
            float s = e[at], dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (long i = 0; i < m; i++) {
                dot += gk[i] * hprev[i];
                gprev[i] += s * gk[i];
            }
            g_e[at] = dot;
        }
    }
}


#pragma omp declare simd notinbranch
extern float exp2f(float);

/* Step t of a padded last chunk (t >= L): its two rows of p values are zero. Returns whether it was. */
static int zero_past_end(long t, long L, float *row1, float *row2, long p) {
    if (t < L) return 0;
    memset(row1, 0, p * sizeof(float));
    memset(row2, 0, p * sizeof(float));
    return 1;
}

/* The scan's inputs in chunks, blocks q = (batch * c + chunk) in [q0, q1): xdt = dt x heads first
 * (nb, c, nh, l, p) for the intra-chunk product, xe = dt x w_end in rows (nb, c, l, nh, p) for the
 * states; steps past L are zero. x (nb, L, nh, p), dt (nb, L, nh), w_end (nb, c, l, nh). */
void ssd_x_chunks(const float *x, const float *dt, const float *w_end, float *xdt, float *xe, long c, long l,
                  long nh, long p, long L, long q0, long q1) {
    for (long q = q0; q < q1; q++) {
        long b = q / c, k = q % c;
        for (long r = 0; r < l; r++) {
            long t = k * l + r;
            for (long hh = 0; hh < nh; hh++) {
                float *d1 = xdt + ((q * nh + hh) * l + r) * p, *d2 = xe + ((q * l + r) * nh + hh) * p;
                if (zero_past_end(t, L, d1, d2, p)) continue;
                long row = (b * L + t) * nh + hh;
                const float *xr = x + row * p;
                float d = dt[row], de = d * w_end[(q * l + r) * nh + hh];
#pragma omp simd
                for (long i = 0; i < p; i++) {
                    d1[i] = d * xr[i];
                    d2[i] = de * xr[i];
                }
            }
        }
    }
}

/* The backward's view of dy per block q: gyh = dy heads first (nb, c, nh, l, p), zero past L; and for
 * chunks after the first G1 = dy ea in rows (nb, c, l, nh, p) with ga[q, h, r] += <G1, y_inter>. */
void ssd_gy_chunks(const float *gy, const float *ea, const float *y_inter, float *gyh, float *G1, float *ga,
                   long c, long g, long hg, long l, long p, long L, long q0, long q1) {
    long nh = g * hg;
    for (long q = q0; q < q1; q++) {
        long b = q / c, k = q % c;
        for (long r = 0; r < l; r++) {
            long t = k * l + r;
            for (long hh = 0; hh < nh; hh++) {
                float *gh = gyh + ((q * nh + hh) * l + r) * p, *g1 = G1 + ((q * l + r) * nh + hh) * p;
                if (zero_past_end(t, L, gh, g1, p)) continue;
                const float *gr = gy + ((b * L + t) * nh + hh) * p;
                memcpy(gh, gr, p * sizeof(float));
                if (k == 0) continue;
                const float *ye = y_inter + (((b * (c - 1) + k - 1) * g + hh / hg) * l + r) * hg * p + (hh % hg) * p;
                float w = ea[(q * l + r) * nh + hh], dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                for (long i = 0; i < p; i++) {
                    g1[i] = gr[i] * w;
                    dot += g1[i] * ye[i];
                }
                ga[(q * nh + hh) * l + r] += dot;
            }
        }
    }
}

/* ---- The intra-chunk part, per (chunk, head) block: y = M X with M = decay * S (l x l) ----
 * M and the products' results live in per-block buffers (16 KB each at l = 64) that stay in cache: as
 * whole tensors they were written and read back through memory, and MKL's batched products of 64 x 64
 * blocks ran far below their in-cache speed there. */

typedef float vf __attribute__((vector_size(64), aligned(4))); /* 16 floats, unaligned loads/stores */
enum { TILE_ROWS = 6, TILE_VECS = 2, TILE_COLS = 32 };

/* C (m x n, row stride ldc) = A B, or += with accumulate. A's element (i, j) is A[i * ars + j * acs],
 * so A may be in either layout; B is (k x n) row-major, row stride ldb. Tiles of 6 rows x 32 columns
 * are held in registers; columns past the last whole tile go through plain loops. */
static void gemm(long m, long n, long k, const float *A, long ars, long acs, const float *B, long ldb, float *C,
                 long ldc, int accumulate) {
    long tiled = n - n % TILE_COLS;
    for (long j = 0; j < tiled; j += TILE_COLS) {
        for (long i = 0; i < m; i += TILE_ROWS) {
            int rows = m - i < TILE_ROWS ? (int)(m - i) : TILE_ROWS;
            vf acc[TILE_ROWS][TILE_VECS];
            for (int r = 0; r < TILE_ROWS; r++)
                for (int v = 0; v < TILE_VECS; v++)
                    acc[r][v] = (accumulate && r < rows) ? *(const vf *)(C + (i + r) * ldc + j + 16 * v) : (vf){0};
            for (long p = 0; p < k; p++) {
                vf bv[TILE_VECS];
                for (int v = 0; v < TILE_VECS; v++) bv[v] = *(const vf *)(B + p * ldb + j + 16 * v);
                if (rows == TILE_ROWS) { /* the common case, unrolled by the compiler */
                    for (int r = 0; r < TILE_ROWS; r++) {
                        float av = A[(i + r) * ars + p * acs];
                        for (int v = 0; v < TILE_VECS; v++) acc[r][v] += av * bv[v];
                    }
                } else {
                    for (int r = 0; r < rows; r++) {
                        float av = A[(i + r) * ars + p * acs];
                        for (int v = 0; v < TILE_VECS; v++) acc[r][v] += av * bv[v];
                    }
                }
            }
            for (int r = 0; r < rows; r++)
                for (int v = 0; v < TILE_VECS; v++) *(vf *)(C + (i + r) * ldc + j + 16 * v) = acc[r][v];
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

/* One (l x l) block: decay = 2^clamp(a_r - a_s, floor, 0) for s <= r, else 0; M = decay * S. */
static void decay_block(const float *ah, const float *s_, long l, float floor_, float *decay, float *M) {
    for (long r = 0; r < l; r++) {
        float ar = ah[r];
#pragma omp simd
        for (long s = 0; s < l; s++) {
            float v = ar - ah[s];
            v = v < floor_ ? floor_ : v;
            v = s <= r ? exp2f(v > 0.0f ? 0.0f : v) : 0.0f;
            decay[r * l + s] = v;
            M[r * l + s] = v * s_[r * l + s];
        }
    }
}

/* y (nb, c, l, nh, p) in rows for the blocks q = (batch * c + chunk) in [q0, q1): M X, plus for chunks
 * after the first y_inter (nb, c-1, g, l, hg*p) times ea (nb, c, l, nh). a (nb, c, nh, l), S (nb, c, g,
 * l, l), xdt (nb, c, nh, l, p). */
void ssd_intra_fwd(const float *a, const float *S, const float *xdt, const float *y_inter, const float *ea,
                   float *y, long c, long g, long hg, long l, long p, float floor_, long q0, long q1) {
    long nh = g * hg, ll = l * l;
    float *D = malloc(ll * sizeof(float)), *M = malloc(ll * sizeof(float)), *Y = malloc(l * p * sizeof(float));
    for (long q = q0; q < q1; q++) {
        long b = q / c, k = q % c;
        for (long hh = 0; hh < nh; hh++) {
            decay_block(a + (q * nh + hh) * l, S + (q * g + hh / hg) * ll, l, floor_, D, M);
            gemm(l, p, l, M, l, 1, xdt + (q * nh + hh) * l * p, p, Y, p, 0);
            for (long r = 0; r < l; r++) {
                float *yo = y + ((q * l + r) * nh + hh) * p;
                if (k == 0) {
                    memcpy(yo, Y + r * p, p * sizeof(float));
                    continue;
                }
                const float *ye = y_inter + (((b * (c - 1) + k - 1) * g + hh / hg) * l + r) * hg * p + (hh % hg) * p;
                float w = ea[(q * l + r) * nh + hh];
#pragma omp simd
                for (long i = 0; i < p; i++) yo[i] = Y[r * p + i] + ye[i] * w;
            }
        }
    }
    free(D);
    free(M);
    free(Y);
}

/* The backward of y = M X and of X = dt x for the blocks [q0, q1), given dy heads first (gyh, laid out
 * like xdt) and the states' share of X's gradient, gxe (nb, c, l, nh, p), with xe = X w_end alike:
 *   gX = M^T dy + gxe w_end  ->  gx = dt gX and gdt = <x, gX> in rows ((nb, L, nh, p), (nb, L, nh)),
 *                                gw = <gxe, xe> (nb, c, l, nh): w_end's gradient times w_end;
 *   P = dy X^T               ->  gS (nb, c, g, l, l) = sum over the group's heads of P decay, and with
 *                                E = P decay S, ga (nb, c, nh, l) += row sums - column sums of E. */
void ssd_intra_bwd(const float *a, const float *S, const float *xdt, const float *gyh, const float *gxe,
                   const float *xe, const float *w_end, const float *x, const float *dt, float *gS, float *ga,
                   float *gw, float *gx, float *gdt, long c, long g, long hg, long l, long p, long L,
                   float floor_, long q0, long q1) {
    long nh = g * hg, ll = l * l;
    float *D = malloc(ll * sizeof(float)), *M = malloc(ll * sizeof(float)), *P = malloc(ll * sizeof(float));
    float *G = malloc(l * p * sizeof(float)), *XT = malloc(p * l * sizeof(float));
    for (long q = q0; q < q1; q++) {
        long b = q / c, k = q % c, real = L - k * l < l ? L - k * l : l; /* steps of this chunk before L */
        for (long gi = 0; gi < g; gi++) {
            const float *s_ = S + (q * g + gi) * ll;
            float *gs = gS + (q * g + gi) * ll;
            memset(gs, 0, ll * sizeof(float));
            for (long hh = gi * hg; hh < (gi + 1) * hg; hh++) {
                const float *xb = xdt + (q * nh + hh) * l * p, *gb = gyh + (q * nh + hh) * l * p;
                float *gah = ga + (q * nh + hh) * l;
                decay_block(a + (q * nh + hh) * l, s_, l, floor_, D, M);

                gemm(l, p, l, M, 1, l, gb, p, G, p, 0); /* M^T dy */
                for (long r = 0; r < l; r++) {
                    long at = (q * l + r) * nh + hh, row = (b * L + k * l + r) * nh + hh;
                    if (r >= real) { /* padded step: xe and gxe are 0 there */
                        gw[at] = 0.0f;
                        continue;
                    }
                    const float *g2 = gxe + at * p, *xv = xe + at * p, *xr = x + row * p;
                    float *gxr = gx + row * p, w = w_end[at], d = dt[row], dw = 0.0f, dx = 0.0f;
#pragma omp simd reduction(+ : dw, dx)
                    for (long i = 0; i < p; i++) {
                        float gX = G[r * p + i] + g2[i] * w;
                        dw += g2[i] * xv[i];
                        dx += xr[i] * gX;
                        gxr[i] = d * gX;
                    }
                    gw[at] = dw;
                    gdt[row] = dx;
                }

                for (long i = 0; i < p; i++) /* X^T, for dy X^T as a product of row-major operands */
#pragma omp simd
                    for (long s = 0; s < l; s++) XT[i * l + s] = xb[s * p + i];
                gemm(l, l, p, gb, p, 1, XT, l, P, l, 0); /* dy X^T */
                for (long r = 0; r < l; r++) {
                    float row = 0.0f;
#pragma omp simd reduction(+ : row)
                    for (long s = 0; s <= r; s++) {
                        float v = P[r * l + s] * D[r * l + s], e = v * s_[r * l + s];
                        gs[r * l + s] += v;
                        row += e;
                        gah[s] -= e;
                    }
                    gah[r] += row;
                }
            }
        }
    }
    free(D);
    free(M);
    free(P);
    free(G);
    free(XT);
}
