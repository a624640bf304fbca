/* One-frame runtime for rvqcodec's streaming encoder, decoder and codebook search.
 *
 * Built on first use by codec/native.py with the system C compiler; Python describes the
 * network as an array of Op (layout mirrored by native.Op) over buffers it owns, and one
 * call runs all of it. Arrays are row-major with contiguous rows (a signal of C channels and
 * N steps is [C][N]); signals are float32, weights float32, float16 or int8 (Op.format), the search's
 * norms and residual float64.
 *
 * Arithmetic follows the PyTorch layers (codec/streaming.py, codec/seanet.py, codec/spectral.py)
 * up to rounding: sums are taken in another order, with fused multiply-adds where the CPU has
 * them (native.py builds with -ffp-contract=fast), and ELU's exp(x) - 1 and GELU's erf come
 * from polynomials good to about 1e-7 absolute, so outputs differ from PyTorch's by about
 * 1e-7. The codebook searches choose as codec/quantizer.py's float64 searches do, up to the
 * float64 summation order (and fused multiply-adds), which matters only for entries within
 * a rounding error of each other: far closer than any the searched codebooks hold (the beam's
 * float32 pass, summed in yet another order from a transposed copy, only picks the candidates
 * for its float64 pass, within the bound that pass allows for). The pitch
 * postfilter (rvq_postfilter) agrees with codec/postfilter.py's NumPy steps to rounding; the
 * low band's gain search (rvq_lowband_search) with codec/lowband.py's bit for bit.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

typedef float v16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef double v8d __attribute__((vector_size(64)));

static inline v16 load16(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }
static inline void store16(float *p, v16 v) { memcpy(p, &v, sizeof v); }
static inline v8 load8(const float *p) { v8 v; memcpy(&v, p, sizeof v); return v; }
static inline void store8(float *p, v8 v) { memcpy(p, &v, sizeof v); }

/* Lane sums by indexing (GCC 11 has no __builtin_shufflevector). */
static inline float hsum16(v16 a) {
    float s[8];
    for (int i = 0; i < 8; i++) s[i] = a[i] + a[i + 8];
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

static inline double hsum8d(v8d a) { return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])); }

/* float16 storage: release weights are float16 values, so keeping the widest layers' weights
 * and the codebooks in float16 halves the bytes a frame reads, without changing a product. */
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 31, man = h & 1023, bits;
    if (exp == 31) bits = sign | 0x7f800000u | (man << 13);  /* inf, nan */
    else if (exp) bits = sign | ((exp + 112) << 23) | (man << 13);
    else if (!man) bits = sign;
    else { /* subnormal: normalise */
        exp = 113;
        while (!(man & 1024)) man <<= 1, exp--;
        bits = sign | (exp << 23) | ((man & 1023) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Two 8-wide vectors as one 16-wide (for CPUs whose vectors are 8 wide). */
static inline v16 join8(v8 lo, v8 hi) {
    v16 v;
    memcpy(&v, &lo, sizeof lo);
    memcpy((char *)&v + sizeof lo, &hi, sizeof hi);
    return v;
}

static inline v16 load16h(const uint16_t *p) {
#if defined(__AVX512F__)
    return (v16)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
#elif defined(__F16C__)
    return join8((v8)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)),
                 (v8)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 8))));
#else
    v16 v;
    for (int i = 0; i < 16; i++) v[i] = half_to_float(p[i]);
    return v;
#endif
}

typedef int8_t v16b __attribute__((vector_size(16)));

static inline v16 load16b(const int8_t *p) {
#if defined(__AVX512F__)
    return (v16)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
#elif defined(__AVX2__)
    __m128i b = _mm_loadu_si128((const __m128i *)p);
    return join8((v8)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), (v8)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8))));
#else
    v16b v;
    memcpy(&v, p, sizeof v);
    return __builtin_convertvector(__builtin_convertvector(v, v16i), v16);
#endif
}

enum { OP_CONV = 0, OP_RESIDUAL = 1, OP_ELU = 2, OP_CONV_TRANSPOSE = 3, OP_NORM = 4, OP_CONVNEXT = 5 };

/* How an op's weights are stored. Only packed weights (products of at most NARROW columns) are
 * ever float16 or int8; int8 rows are scaled, row m of the weight being scale[m] times its
 * integers, all exactly (native.py checks). */
enum { WEIGHTS_FLOAT32 = 0, WEIGHTS_FLOAT16 = 1, WEIGHTS_INT8 = 2 };

typedef struct {
    int32_t kind;
    int32_t c_in, c_out, kernel, stride, dilation;
    int32_t context;  /* left context kept in the window (conv), overlap carried (transposed) */
    int32_t n;        /* input steps per call */
    int32_t hidden;   /* residual: channels between the two convolutions */
    int32_t format;   /* WEIGHTS_*, for both weights of a residual */
    float *window;    /* conv: [c_in][context + n], the layer's state then the input */
    const float *weight, *bias;    /* conv [c_out][c_in * kernel]; transposed [c_out * kernel][c_in]; packed if narrow */
    const float *weight2, *bias2;  /* residual: the 1x1 convolution [c_out][hidden] */
    const float *scale, *scale2;   /* WEIGHTS_INT8: the rows' scales, [rows of the product] */
    float *cols;      /* scratch: conv taps [c_in * kernel][n_out]; transposed [c_out * kernel][n]; ConvNeXt [c_in][n] */
    float *mid;       /* scratch: residual, ConvNeXt [hidden][n]; transposed [c_out][n * stride + context] */
    float *carry;     /* transposed: [c_out][context], the layer's state */
    float *out;       /* [c_out][n_out] */
    const float *depthwise, *depthwise_bias;  /* ConvNeXt: [c_in][kernel], [c_in] */
    const float *norm_weight, *norm_bias;     /* norm, ConvNeXt: the layer norm's [c_in] each */
    const float *gain;                        /* ConvNeXt: the residual branch's [c_in] */
    float eps;                                /* norm, ConvNeXt: the layer norm's */
} Op;

/* Products with at most NARROW columns (the deepest layers' few steps per frame) read their
 * weights packed (see packed_*), each weight once per frame, in the order it is stored. */
#define NARROW 8

static inline float as_float(float v) { return v; }

/* y[M][N] = w[M][J] x[J][N] + b[M] (N > NARROW) ---------------------------------------------------------- */

/* Columns t.. of y, VW wide, eight rows at a time: each x load feeds eight independent FMAs. */
#define GEMM_COLUMNS(VT, VW, LOAD, STORE)                                                    \
    for (; t + VW <= N; t += VW) {                                                           \
        int m = 0;                                                                           \
        for (; m + 8 <= M; m += 8) {                                                         \
            const float *w0 = w + (int64_t)m * J;                                            \
            VT a[8] = {{0}};                                                                 \
            for (int j = 0; j < J; j++) {                                                    \
                VT v = LOAD(x + row[j] + t);                                         \
                for (int i = 0; i < 8; i++) a[i] += w0[(int64_t)i * J + j] * v;              \
            }                                                                                \
            for (int i = 0; i < 8; i++) STORE(y + (int64_t)(m + i) * N + t, a[i] + (b ? b[m + i] : 0.0f)); \
        }                                                                                    \
        for (; m < M; m++) {                                                                 \
            const float *w0 = w + (int64_t)m * J;                                            \
            VT a0 = {0};                                                                     \
            for (int j = 0; j < J; j++) a0 += w0[j] * LOAD(x + row[j] + t);          \
            STORE(y + (int64_t)m * N + t, a0 + (b ? b[m] : 0.0f));                           \
        }                                                                                    \
    }

/* Columns t..t+32 of rows m..m+R of y (two vectors per row): each broadcast weight feeds two FMAs. */
#define ROWS_32(R)                                                                           \
    for (; m + R <= M; m += R) {                                                             \
        const float *w0 = w + (int64_t)m * J;                                                \
        v16 a[R] = {{0}}, c[R] = {{0}};                                                      \
        for (int j = 0; j < J; j++) {                                                        \
            v16 u = load16(x + row[j] + t), v = load16(x + row[j] + t + 16);     \
            for (int i = 0; i < R; i++) {                                                    \
                float wi = w0[(int64_t)i * J + j];                                           \
                a[i] += wi * u;                                                              \
                c[i] += wi * v;                                                              \
            }                                                                                \
        }                                                                                    \
        for (int i = 0; i < R; i++) {                                                        \
            float bi = b ? b[m + i] : 0.0f;                                                  \
            store16(y + (int64_t)(m + i) * N + t, a[i] + bi);                                \
            store16(y + (int64_t)(m + i) * N + t + 16, c[i] + bi);                           \
        }                                                                                    \
    }

/* x's row j starts at x + row[j]: a matrix [J][N] (row[j] = j N), or a convolution's window,
 * whose taps need no copy at stride 1. */
static void gemm(int M, int J, int N, const float *w, const float *x, const int64_t *row, const float *b, float *y) {
    int t = 0;
    for (; t + 32 <= N; t += 32) {
        int m = 0;
        ROWS_32(8)
        ROWS_32(4)
        ROWS_32(1)
    }
    GEMM_COLUMNS(v16, 16, load16, store16)
    GEMM_COLUMNS(v8, 8, load8, store8)
    for (; t < N; t++)
        for (int m = 0; m < M; m++) {
            const float *w0 = w + (int64_t)m * J;
            float s = 0;
            for (int j = 0; j < J; j++) s += w0[j] * x[row[j] + t];
            y[(int64_t)m * N + t] = s + (b ? b[m] : 0.0f);
        }
}

/* y = w x + b for N <= NARROW columns, w packed: row blocks of PACKED_ROWS(N) rows (the last
 * padded with zero rows), each stored column by column, [M / B][J][B] for B rows a block.
 * A block's B x N sums stay in registers while its weights stream past once: no sums across
 * lanes, and at least eight independent sums to hide the FMA latency. */
#define PACKED_VECTORS(N) ((N) == 1 ? 8 : (N) == 2 ? 4 : (N) == 3 ? 3 : 2)
#define PACKED_ROWS(N) (16 * PACKED_VECTORS(N))

int rvq_packed_rows(int n) { return n >= 1 && n <= NARROW ? PACKED_ROWS(n) : 0; }

#define PACKED(NAME, T, LOAD, N)                                                             \
    static void NAME(int M, int J, const T *w, const float *scale, const float *x, const float *b, float *y) { \
        enum { V = PACKED_VECTORS(N), B = 16 * V };                                          \
        for (int m0 = 0; m0 < M; m0 += B) {                                                  \
            const T *block = w + (int64_t)m0 * J;                                            \
            v16 a[V][N];                                                                     \
            _Pragma("GCC unroll 8") for (int v = 0; v < V; v++)                              \
                _Pragma("GCC unroll 8") for (int t = 0; t < N; t++) a[v][t] = (v16){0};      \
            for (int j = 0; j < J; j++) {                                                    \
                const T *row = block + (int64_t)j * B;                                       \
                const float *xj = x + (int64_t)j * N;                                        \
                _Pragma("GCC unroll 8") for (int v = 0; v < V; v++) {                        \
                    v16 wv = LOAD(row + 16 * v);                                             \
                    _Pragma("GCC unroll 8") for (int t = 0; t < N; t++) a[v][t] += wv * xj[t]; \
                }                                                                            \
            }                                                                                \
            float tile[N][B];                                                                \
            for (int v = 0; v < V; v++)                                                      \
                for (int t = 0; t < N; t++) store16(tile[t] + 16 * v, a[v][t]);              \
            const int rows = M - m0 < B ? M - m0 : B;                                        \
            for (int i = 0; i < rows; i++)                                                   \
                for (int t = 0; t < N; t++)                                                  \
                    y[(int64_t)(m0 + i) * N + t] = (scale ? tile[t][i] * scale[m0 + i] : tile[t][i]) + (b ? b[m0 + i] : 0.0f); \
        }                                                                                    \
    }

#define PACKED_ALL(N)                                                                        \
    PACKED(packed_float_##N, float, load16, N)                                               \
    PACKED(packed_half_##N, uint16_t, load16h, N)                                            \
    PACKED(packed_int8_##N, int8_t, load16b, N)
PACKED_ALL(1) PACKED_ALL(2) PACKED_ALL(3) PACKED_ALL(4) PACKED_ALL(5) PACKED_ALL(6) PACKED_ALL(7) PACKED_ALL(8)

/* y = w x + b, [M][J] x [J][N]: w packed (stored as format says, int8 rows times scale) if
 * N <= NARROW, else float32 as it is. */
static void product(int M, int J, int N, const void *w, int format, const float *scale, const float *x, const float *b,
                    float *y) {
#define PACKED_CASE(N)                                                                       \
    case N:                                                                                  \
        if (format == WEIGHTS_INT8) packed_int8_##N(M, J, w, scale, x, b, y);                \
        else if (format == WEIGHTS_FLOAT16) packed_half_##N(M, J, w, NULL, x, b, y);         \
        else packed_float_##N(M, J, w, NULL, x, b, y);                                       \
        return;
    switch (N) {
        PACKED_CASE(1) PACKED_CASE(2) PACKED_CASE(3) PACKED_CASE(4)
        PACKED_CASE(5) PACKED_CASE(6) PACKED_CASE(7) PACKED_CASE(8)
    }
    int64_t row[J];
    for (int j = 0; j < J; j++) row[j] = (int64_t)j * N;
    gemm(M, J, N, w, x, row, b, y);
#undef PACKED_CASE
}

/* ELU ---------------------------------------------------------------------------------------- */

static inline v16 select16(v16i mask, v16 a, v16 b) { return (v16)((mask & (v16i)a) | (~mask & (v16i)b)); }

/* exp of 16 values z <= 0 (Cephes' expf polynomial); below -87 it is exp(-87). */
static inline v16 exp16(v16 z) {
    const v16 zero = {0}, floor_ = zero - 87.0f;
    z = select16(z < floor_, floor_, z);
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    v16 k = (z * 1.44269504088896341f + magic) - magic;
    v16 r = z - k * 0.693359375f + k * 2.12194440e-4f;
    v16 p = 1.9875691500e-4f + zero;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    v16 e = p * r * r + r + 1.0f;
    v16i bits = (__builtin_convertvector(k, v16i) + 127) << 23;
    return e * (v16)bits;
}

/* ELU of 16 values: x for x > 0, exp(x) - 1 otherwise. */
static inline v16 elu16(v16 x) {
    const v16 zero = {0};
    v16 e = exp16(select16(x < zero, x, zero));
    return select16(x <= zero, e - 1.0f, x); /* (NaN stays NaN) */
}

/* GELU of 16 values, x (1 + erf(x / sqrt 2)) / 2, with erf from Abramowitz and Stegun's
 * 7.1.26 (within 1.5e-7). */
static inline v16 gelu16(v16 x) {
    const v16 zero = {0};
    v16 u = x * 0.70710678118654752f;
    v16 a = select16(u < zero, zero - u, u);
    v16 t = 1.0f / (1.0f + 0.3275911f * a);
    v16 p = 1.061405429f * t - 1.453152027f;
    p = p * t + 1.421413741f;
    p = p * t - 0.284496736f;
    p = p * t + 0.254829592f;
    v16 erf_a = 1.0f - p * t * exp16(zero - a * a);
    return 0.5f * x * (1.0f + select16(u < zero, zero - erf_a, erf_a)); /* (NaN stays NaN) */
}

/* dst[i] = F(src[i]) for a 16-wide F; dst may be src. */
#define ELEMENTWISE(NAME, F)                                                                 \
    static void NAME(int64_t n, const float *src, float *dst) {                              \
        int64_t i = 0;                                                                       \
        for (; i + 16 <= n; i += 16) store16(dst + i, F(load16(src + i)));                   \
        if (i < n) {                                                                         \
            float tail[16] = {0};                                                            \
            memcpy(tail, src + i, (n - i) * sizeof(float));                                  \
            store16(tail, F(load16(tail)));                                                  \
            memcpy(dst + i, tail, (n - i) * sizeof(float));                                  \
        }                                                                                    \
    }
ELEMENTWISE(elu, elu16)
ELEMENTWISE(gelu, gelu16)

/* Layer norm over the C channels of each of n steps, [C][n] -> [C][n]: (x - mean) /
 * sqrt(variance + eps) * g + b, mean and variance summed in float64; y may be x. */
static void layer_norm(int C, int n, const float *x, const float *g, const float *b, float eps, float *y) {
    for (int t = 0; t < n; t++) {
        double sum = 0, squares = 0;
        for (int c = 0; c < C; c++) sum += x[(int64_t)c * n + t];
        const double mean = sum / C;
        for (int c = 0; c < C; c++) {
            const double d = x[(int64_t)c * n + t] - mean;
            squares += d * d;
        }
        const float m = (float)mean, inv = (float)(1.0 / __builtin_sqrt(squares / C + eps));
        for (int c = 0; c < C; c++) y[(int64_t)c * n + t] = (x[(int64_t)c * n + t] - m) * inv * g[c] + b[c];
    }
}

/* Layers ------------------------------------------------------------------------------------- */

static int conv_outputs(const Op *op) { return op->n / op->stride; }

/* The window's inputs are in place: multiply by the taps (gathered first unless a wide
 * product can read them in place), slide the window. */
static void conv_window(const Op *op, int c_out, const void *w, const float *scale, const float *b, float *y) {
    const int k = op->kernel, L = op->context + op->n, n_out = conv_outputs(op), J = op->c_in * k;
    if (op->stride == 1 && n_out > NARROW) {
        int64_t row[J];
        for (int j = 0; j < J; j++) row[j] = (int64_t)(j / k) * L + (j % k) * op->dilation;
        gemm(c_out, J, n_out, w, op->window, row, b, y);
    } else {
        for (int ci = 0; ci < op->c_in; ci++) {
            const float *src = op->window + (int64_t)ci * L;
            for (int kk = 0; kk < k; kk++, src += op->dilation) {
                float *dst = op->cols + ((int64_t)ci * k + kk) * n_out;
                for (int t = 0; t < n_out; t++) dst[t] = src[t * op->stride];
            }
        }
        product(c_out, J, n_out, w, op->format, scale, op->cols, b, y);
    }
    for (int ci = 0; ci < op->c_in; ci++) {
        float *row = op->window + (int64_t)ci * L;
        memmove(row, row + op->n, op->context * sizeof(float));
    }
}

static void conv(const Op *op, const float *x) {
    if (!op->window) { /* pointwise in time */
        product(op->c_out, op->c_in, op->n, op->weight, op->format, op->scale, x, op->bias, op->out);
        return;
    }
    const int L = op->context + op->n;
    for (int ci = 0; ci < op->c_in; ci++)
        memcpy(op->window + (int64_t)ci * L + op->context, x + (int64_t)ci * op->n, op->n * sizeof(float));
    conv_window(op, op->c_out, op->weight, op->scale, op->bias, op->out);
}

/* x + conv1x1(ELU(conv_dilated(ELU(x)))); the window holds ELU(x). */
static void residual(const Op *op, const float *x) {
    const int L = op->context + op->n, n = op->n;
    if (n >= 16)
        for (int ci = 0; ci < op->c_in; ci++) elu(n, x + (int64_t)ci * n, op->window + (int64_t)ci * L + op->context);
    else { /* rows shorter than a vector: in one pass, then into the window (before the taps fill cols) */
        elu((int64_t)op->c_in * n, x, op->cols);
        for (int ci = 0; ci < op->c_in; ci++)
            memcpy(op->window + (int64_t)ci * L + op->context, op->cols + (int64_t)ci * n, n * sizeof(float));
    }
    conv_window(op, op->hidden, op->weight, op->scale, op->bias, op->mid);
    elu((int64_t)op->hidden * n, op->mid, op->mid);
    product(op->c_out, op->hidden, n, op->weight2, op->format, op->scale2, op->mid, op->bias2, op->out);
    for (int64_t i = 0; i < (int64_t)op->c_out * n; i++) op->out[i] += x[i];
}

/* Each input step adds kernel samples at stride steps; the first context samples get the
 * carried tail, the last context samples become the next tail. */
static void conv_transpose(const Op *op, const float *x) {
    const int k = op->kernel, s = op->stride, n = op->n, ov = op->context, full = n * s + ov;
    product(op->c_out * k, op->c_in, n, op->weight, op->format, op->scale, x, NULL, op->cols);
    for (int co = 0; co < op->c_out; co++) {
        float *acc = op->mid + (int64_t)co * full;
        memset(acc, 0, full * sizeof(float));
        for (int kk = 0; kk < k; kk++) {
            const float *col = op->cols + ((int64_t)co * k + kk) * n;
            for (int t = 0; t < n; t++) acc[t * s + kk] += col[t];
        }
        float *carry = op->carry + (int64_t)co * ov, *y = op->out + (int64_t)co * n * s;
        for (int i = 0; i < ov; i++) acc[i] += carry[i];
        for (int i = 0; i < n * s; i++) y[i] = acc[i] + op->bias[co];
        memcpy(carry, acc + n * s, ov * sizeof(float));
    }
}

/* x + gain * pw2(GELU(pw1(norm(depthwise(x))))), the depthwise convolution's window holding
 * its state then x; pw1 is weight [hidden][c_in], pw2 weight2 [c_in][hidden]. */
static void convnext(const Op *op, const float *x) {
    const int C = op->c_in, n = op->n, k = op->kernel, L = op->context + n;
    for (int c = 0; c < C; c++) {
        float *win = op->window + (int64_t)c * L;
        const float *w = op->depthwise + (int64_t)c * k;
        memcpy(win + op->context, x + (int64_t)c * n, n * sizeof(float));
        for (int t = 0; t < n; t++) {
            float s = op->depthwise_bias[c];
            for (int kk = 0; kk < k; kk++) s += w[kk] * win[t + kk * op->dilation];
            op->cols[(int64_t)c * n + t] = s;
        }
        memmove(win, win + n, op->context * sizeof(float));
    }
    layer_norm(C, n, op->cols, op->norm_weight, op->norm_bias, op->eps, op->cols);
    product(op->hidden, C, n, op->weight, op->format, op->scale, op->cols, op->bias, op->mid);
    gelu((int64_t)op->hidden * n, op->mid, op->mid);
    product(C, op->hidden, n, op->weight2, op->format, op->scale2, op->mid, op->bias2, op->out);
    for (int c = 0; c < C; c++)
        for (int t = 0; t < n; t++) op->out[(int64_t)c * n + t] = x[(int64_t)c * n + t] + op->gain[c] * op->out[(int64_t)c * n + t];
}

/* Runs ops[0..n_ops) on x; the result is in ops[n_ops - 1].out. */
void rvq_run(const Op *ops, int n_ops, const float *x) {
    for (int i = 0; i < n_ops; i++) {
        const Op *op = ops + i;
        switch (op->kind) {
            case OP_CONV: conv(op, x); break;
            case OP_RESIDUAL: residual(op, x); break;
            case OP_ELU: elu((int64_t)op->c_in * op->n, x, op->out); break;
            case OP_CONV_TRANSPOSE: conv_transpose(op, x); break;
            case OP_NORM: layer_norm(op->c_in, op->n, x, op->norm_weight, op->norm_bias, op->eps, op->out); break;
            case OP_CONVNEXT: convnext(op, x); break;
        }
        x = op->out;
    }
}

/* Residual vector quantization of rows z[N][D]: at each of n_q levels the entry of
 * codebooks[level][K][D] (float32, or float16 with HALF) nearest the float64 residual
 * (|c|^2 - 2 r.c smallest, norms given; the first one on ties), whose value is then taken off
 * the residual. codes: [N][n_q]; scratch: float64 [D] and float32 [D + K].
 *
 * Each level is searched in float32 first. Its distances are off by at most delta (below), so
 * only entries within 2 delta of the float32 best can be the float64 nearest; those few (most
 * often the best alone) are compared again in float64, so the choice is the float64 search's. */

/* acc0, acc1 += the 16 values c (as float64) times r[0..16). */
static inline void fma16d(v16 c, const double *r, v8d *acc0, v8d *acc1) {
    v8 lo, hi;
    memcpy(&lo, &c, sizeof lo);
    memcpy(&hi, (const char *)&c + sizeof lo, sizeof hi);
    v8d r0, r1;
    memcpy(&r0, r, sizeof r0);
    memcpy(&r1, r + 8, sizeof r1);
    *acc0 += __builtin_convertvector(lo, v8d) * r0;
    *acc1 += __builtin_convertvector(hi, v8d) * r1;
}

/* r.c in float64, c one entry. */
#define DOT64(T, LOAD, SCALAR, c, out)                                                       \
    {                                                                                        \
        v8d lo = {0}, hi = {0};                                                              \
        int d = 0;                                                                           \
        for (; d + 16 <= D; d += 16) fma16d(LOAD((c) + d), r + d, &lo, &hi);                 \
        out = hsum8d(lo + hi);                                                               \
        for (; d < D; d++) out += (double)SCALAR((c)[d]) * r[d];                             \
    }

/* r32.c in float32. */
#define DOT32(T, LOAD, SCALAR, c, out)                                                       \
    {                                                                                        \
        v16 a0 = {0}, a1 = {0};                                                              \
        int d = 0;                                                                           \
        for (; d + 32 <= D; d += 32) {                                                       \
            a0 += LOAD((c) + d) * load16(r32 + d);                                           \
            a1 += LOAD((c) + d + 16) * load16(r32 + d + 16);                                 \
        }                                                                                    \
        for (; d + 16 <= D; d += 16) a0 += LOAD((c) + d) * load16(r32 + d);                  \
        out = hsum16(a0 + a1);                                                               \
        for (; d < D; d++) out += SCALAR((c)[d]) * r32[d];                                   \
    }

#define SEARCH(NAME, T, LOAD, SCALAR)                                                        \
    static void NAME(int N, int n_q, int K, int D, const T *codebooks, const double *norms, const float *z, \
                     double *r, float *scratch, int64_t *codes) {                            \
        float *r32 = scratch, *dist32 = scratch + D;                                         \
        for (int row = 0; row < N; row++) {                                                  \
            for (int d = 0; d < D; d++) r[d] = z[(int64_t)row * D + d];                      \
            for (int level = 0; level < n_q; level++) {                                      \
                const T *book = codebooks + (int64_t)level * K * D;                          \
                const double *nrm = norms + (int64_t)level * K;                              \
                double rr = 0, cc = 0;                                                       \
                for (int d = 0; d < D; d++) rr += r[d] * r[d], r32[d] = (float)r[d];         \
                float best32 = 0;                                                            \
                int finite = 1;                                                              \
                for (int e = 0; e < K; e++) {                                                \
                    float dot;                                                               \
                    DOT32(T, LOAD, SCALAR, book + (int64_t)e * D, dot)                       \
                    dist32[e] = (float)nrm[e] - 2.0f * dot;                                  \
                    if (e == 0 || dist32[e] < best32) best32 = dist32[e];                    \
                    if (nrm[e] > cc) cc = nrm[e];                                            \
                    finite &= dist32[e] - dist32[e] == 0.0f; /* neither inf nor NaN */       \
                }                                                                            \
                /* |float32 - exact| of a distance: rounding r, the products and sums (D + 2 \
                 * units of 2^-24 of sum |c_d r_d| <= (|c|^2 + |r|^2) / 2), the norm and the \
                 * difference; doubled, and doubled again for the float64 side. */           \
                /* (the last term: float32 subnormals' absolute rounding) */                  \
                double delta = 4.0 * (D + 4) * 0x1p-24 * ((cc + rr) / 2 + cc) + (4.0 * D + 16) * 0x1p-149; \
                double limit = (double)best32 + 2.0 * delta, best_dist = 0;                  \
                finite &= limit - limit == 0.0; /* else every entry goes to float64 */       \
                int best = -1;                                                               \
                for (int e = 0; e < K; e++) {                                                \
                    if (finite && !((double)dist32[e] <= limit)) continue;                   \
                    double dot;                                                              \
                    DOT64(T, LOAD, SCALAR, book + (int64_t)e * D, dot)                       \
                    double dist = nrm[e] - 2.0 * dot;                                        \
                    if (dist != dist) { /* NaN ranks first, as in torch.argmin */             \
                        best = e;                                                            \
                        break;                                                               \
                    }                                                                        \
                    if (best < 0 || dist < best_dist) best = e, best_dist = dist;            \
                }                                                                            \
                if (best < 0) best = 0; /* (no entries) */                                   \
                codes[(int64_t)row * n_q + level] = best;                                    \
                const T *c = book + (int64_t)best * D;                                       \
                for (int d = 0; d < D; d++) r[d] -= (double)SCALAR(c[d]);                    \
            }                                                                                \
        }                                                                                    \
    }

SEARCH(search_float, float, load16, as_float)
SEARCH(search_half, uint16_t, load16h, half_to_float)

void rvq_search(int N, int n_q, int K, int D, int half, const void *codebooks, const double *norms, const float *z,
                double *residual, float *scratch, int64_t *codes) {
    if (half)
        search_half(N, n_q, K, D, codebooks, norms, z, residual, scratch, codes);
    else
        search_float(N, n_q, K, D, codebooks, norms, z, residual, scratch, codes);
}

/* Beam search of rows z[N][D] over n_q levels (codec/quantizer.py's beam_search, for a few live
 * frames): at each level every kept code sequence (at most `beam`) is extended by every entry of
 * codebooks[level][K][D] and the `beam` extensions that leave the smallest float64 squared error,
 * |r|^2 + |c|^2 - 2 r.c (norms given; the earlier sequence and entry first on ties), are kept;
 * the best at the end is written to codes [N][n_q]. With `w` (float64 [D], else NULL) every
 * dimension's squares count w[d] times: sum w r^2 + norms - 2 sum w r c, norms then being
 * sum w c^2; an infinite norm (an entry that repeats an earlier one) is never kept. bound
 * [n_q][2]: each level's largest |c|^2 (unweighted) and largest finite |norm|.
 * Returns -1 (writing nothing) if its scratch cannot be allocated.
 *
 * As the greedy search, each level is ranked in float32 first. A float32 distance is off by
 * at most delta = 4 (D + 8) 2^-24 (|rw|^2 + |c|^2 + |norm| + err) (rw = w r: rounding rw, the
 * products and sums, |rw.c| <= (|rw|^2 + |c|^2) / 2, the norm, the error and the two additions,
 * with room to spare), so only the extensions within 2 delta of the beam-th float32 distance
 * can be among the float64 best; those are ranked again in float64, in the same order, so
 * the choice is the float64 search's. */
#define BEAM_BLOCK 8 /* sequences whose sums a vector of entries keeps in registers at once */

/* `dist`, which beats the last of them or finds room, into best [want], the smallest `count`
 * distances so far in order -> their count now. */
static int keep_smallest(float dist, float *best, int count, int want) {
    int at = count < want ? count++ : want - 1;
    while (at > 0 && dist < best[at - 1]) best[at] = best[at - 1], at--;
    best[at] = dist;
    return count;
}

#define BEAM(NAME, T, LOAD, SCALAR)                                                          \
    static int NAME(int N, int n_q, int K, int D, int beam, const T *codebooks, const T *books_t, \
                    const double *norms, const double *w, const double *bound, const float *z, int64_t *codes) { \
        double *res = malloc(sizeof(double) * 2 * beam * D), *err = malloc(sizeof(double) * 2 * beam); \
        double *rw = malloc(sizeof(double) * D), *cand = malloc(sizeof(double) * beam);      \
        float *r32all = malloc(sizeof(float) * beam * D), *dist32 = malloc(sizeof(float) * beam * K); \
        float *best32 = malloc(sizeof(float) * beam), *row32 = malloc(sizeof(float) * D), *eb = malloc(sizeof(float) * beam); \
        int64_t *seq = malloc(sizeof(int64_t) * 2 * beam * n_q);                             \
        int *parent = malloc(sizeof(int) * beam), *entry = malloc(sizeof(int) * beam);       \
        int ok = res && err && rw && cand && r32all && dist32 && best32 && row32 && eb && seq && parent && entry; \
        for (int row = 0; ok && row < N; row++) {                                            \
            double *r_old = res, *r_new = res + beam * D, *e_old = err, *e_new = err + beam; \
            int64_t *s_old = seq, *s_new = seq + beam * n_q;                                 \
            int kept = 1;                                                                    \
            e_old[0] = 0;                                                                    \
            for (int d = 0; d < D; d++) {                                                    \
                r_old[d] = z[(int64_t)row * D + d];                                          \
                e_old[0] += w ? r_old[d] * r_old[d] * w[d] : r_old[d] * r_old[d];            \
            }                                                                                \
            for (int level = 0; level < n_q; level++) {                                      \
                const T *book = codebooks + (int64_t)level * K * D;                          \
                const double *nrm = norms + (int64_t)level * K;                              \
                int count32 = 0, want = beam < kept * K ? beam : kept * K;                   \
                double delta = 0;                                                            \
                for (int b = 0; b < kept; b++) { /* float32: every extension */              \
                    double rr = 0;                                                           \
                    for (int d = 0; d < D; d++) {                                            \
                        double v = w ? r_old[b * D + d] * w[d] : r_old[b * D + d];           \
                        r32all[b * D + d] = (float)v, rr += v * v;                           \
                    }                                                                        \
                    double db = 4.0 * (D + 8) * 0x1p-24 * (rr + bound[2 * level] + bound[2 * level + 1] + e_old[b]) \
                                + (4.0 * D + 16) * 0x1p-149;                                 \
                    if (db > delta) delta = db;                                              \
                    eb[b] = (float)e_old[b];                                                 \
                }                                                                            \
                const T *book_t = books_t ? books_t + (int64_t)level * D * K : NULL; /* [D][K] */ \
                int e0 = 0;                                                                  \
                for (; books_t && e0 + 16 <= K; e0 += 16) { /* 16 entries a vector, all sequences */ \
                    v16 acc[BEAM_BLOCK];                                                     \
                    for (int b0 = 0; b0 < kept; b0 += BEAM_BLOCK) {                          \
                        int nb = kept - b0 < BEAM_BLOCK ? kept - b0 : BEAM_BLOCK;            \
                        for (int b = 0; b < nb; b++) acc[b] = (v16){0};                      \
                        for (int d = 0; d < D; d++) {                                        \
                            v16 c = LOAD(book_t + (int64_t)d * K + e0);                      \
                            for (int b = 0; b < nb; b++) acc[b] += c * r32all[(b0 + b) * D + d]; \
                        }                                                                    \
                        for (int b = 0; b < nb; b++)                                         \
                            for (int i = 0; i < 16; i++) {                                   \
                                int e = e0 + i;                                              \
                                float dist = ((float)nrm[e] - 2.0f * acc[b][i]) + eb[b0 + b]; \
                                dist32[(b0 + b) * K + e] = dist;                             \
                                if (count32 < want || dist < best32[want - 1])           \
                                    count32 = keep_smallest(dist, best32, count32, want); \
                            }                                                                \
                    }                                                                        \
                }                                                                            \
                for (int e = e0; e < K; e++) { /* the rest: each entry read once for all the sequences */ \
                    const T *c = book + (int64_t)e * D;                                      \
                    int d = 0;                                                               \
                    for (; d + 16 <= D; d += 16) store16(row32 + d, LOAD(c + d));             \
                    for (; d < D; d++) row32[d] = SCALAR(c[d]);                              \
                    for (int b = 0; b < kept; b++) {                                         \
                        const float *r32 = r32all + b * D;                                   \
                        float dot;                                                           \
                        DOT32(float, load16, as_float, row32, dot)                           \
                        float dist = ((float)nrm[e] - 2.0f * dot) + eb[b];                   \
                        dist32[b * K + e] = dist;                                            \
                        if (count32 < want || dist < best32[want - 1])                   \
                            count32 = keep_smallest(dist, best32, count32, want);        \
                    }                                                                        \
                }                                                                            \
                double limit = count32 ? (double)best32[count32 - 1] + 2.0 * delta : 0;      \
                int every = !(limit - limit == 0); /* (not finite: rank everything in float64) */ \
                int count = 0;                                                               \
                for (int b = 0; b < kept; b++) { /* float64: the extensions that can count */ \
                    const double *r = r_old + b * D;                                         \
                    if (w) {                                                                 \
                        for (int d = 0; d < D; d++) rw[d] = r[d] * w[d];                     \
                        r = rw;                                                              \
                    }                                                                        \
                    for (int e = 0; e < K; e++) {                                            \
                        if (!every && !((double)dist32[b * K + e] <= limit)) continue;       \
                        double dot;                                                          \
                        DOT64(T, LOAD, SCALAR, book + (int64_t)e * D, dot)                   \
                        double dist = (nrm[e] - 2.0 * dot) + e_old[b];                       \
                        if (dist > DBL_MAX) continue; /* a masked duplicate: never kept */   \
                        if (count == beam && !(dist < cand[beam - 1])) continue;             \
                        int at = count < beam ? count++ : beam - 1;                          \
                        while (at > 0 && dist < cand[at - 1]) {                              \
                            cand[at] = cand[at - 1], parent[at] = parent[at - 1], entry[at] = entry[at - 1]; \
                            at--;                                                            \
                        }                                                                    \
                        cand[at] = dist, parent[at] = b, entry[at] = e;                      \
                    }                                                                        \
                }                                                                            \
                for (int j = 0; j < count; j++) {                                            \
                    const T *c = book + (int64_t)entry[j] * D;                               \
                    double *r = r_new + j * D, sum = 0;                                      \
                    for (int d = 0; d < D; d++) {                                            \
                        r[d] = r_old[parent[j] * D + d] - (double)SCALAR(c[d]);              \
                        sum += w ? r[d] * r[d] * w[d] : r[d] * r[d];                         \
                    }                                                                        \
                    e_new[j] = sum;                                                          \
                    for (int l = 0; l < level; l++) s_new[j * n_q + l] = s_old[parent[j] * n_q + l]; \
                    s_new[j * n_q + level] = entry[j];                                       \
                }                                                                            \
                kept = count;                                                                \
                double *tr = r_old; r_old = r_new; r_new = tr;                               \
                double *te = e_old; e_old = e_new; e_new = te;                               \
                int64_t *ts = s_old; s_old = s_new; s_new = ts;                              \
            }                                                                                \
            for (int l = 0; l < n_q; l++) codes[(int64_t)row * n_q + l] = s_old[l];          \
        }                                                                                    \
        free(res), free(err), free(rw), free(cand), free(r32all), free(dist32), free(best32); \
        free(row32), free(eb), free(seq), free(parent), free(entry);                         \
        return ok ? 0 : -1;                                                                  \
    }

BEAM(beam_float, float, load16, as_float)
BEAM(beam_half, uint16_t, load16h, half_to_float)

int rvq_beam(int N, int n_q, int K, int D, int half, int beam, const void *codebooks, const void *books_t,
             const double *norms, const double *weights, const double *bound, const float *z, int64_t *codes) {
    if (beam < 1 || K < 1) return -1;
    return half ? beam_half(N, n_q, K, D, beam, codebooks, books_t, norms, weights, bound, z, codes)
                : beam_float(N, n_q, K, D, beam, codebooks, books_t, norms, weights, bound, z, codes);
}

/* The latent of codes [B][K][F] (entries of levels 0..K of codebooks [L][size][D], float32 or
 * float16, summed in level order) -> z [B][D][F]. Returns -1, writing nothing sensible, if a
 * code is outside 0..size-1. */
int rvq_decode(int B, int K, int F, int size, int D, int half, const void *codebooks, const int64_t *codes, float *z) {
    for (int64_t i = 0; i < (int64_t)B * K * F; i++)
        if (codes[i] < 0 || codes[i] >= size) return -1;
    for (int b = 0; b < B; b++)
        for (int f = 0; f < F; f++)
            for (int d = 0; d < D; d++) {
                float s = 0;
                for (int k = 0; k < K; k++) {
                    int64_t at = ((int64_t)k * size + codes[((int64_t)b * K + k) * F + f]) * D + d;
                    s += half ? half_to_float(((const uint16_t *)codebooks)[at]) : ((const float *)codebooks)[at];
                }
                z[((int64_t)b * D + d) * F + f] = s;
            }
    return 0;
}

/* The pitch postfilter (codec/postfilter.py, PitchPostfilter.frames and .pitch) over F whole
 * frames of N rows: buf [N][keep + F * hop] holds each row's last keep input samples, then
 * the frames; lag and gain [N] come in as the frame before's and leave as the last frame's;
 * out [N][F * hop]. Frame f's period comes from its window of the last `window` samples up to
 * its end (zeros where the window holds a non-finite sample, which then gets no comb): the
 * normalised correlation of the window's last window - hi samples with the span `lag`
 * samples earlier, for lags lo..hi; the shortest lag at a local maximum within `octave` of
 * the best wins. The frame is combed, (x[n] + g x[n - lag]) / (1 + g), by its own filter
 * and by the frame before's, cross-faded over the frame. The same steps as the NumPy code,
 * the correlation summed directly rather than through an FFT, so results agree with it to
 * rounding (a near-tie between two periods may go either way). Returns -1 if out of memory. */
int rvq_postfilter(int N, int F, int hop, int window, int keep, int lo, int hi, double strength, double onset,
                   double octave, const double *buf, int64_t *lag, double *gain, double *out) {
    int lags = hi - lo + 1, tail = window - hi;
    int64_t width = (int64_t)keep + (int64_t)F * hop;
    double *seg = malloc(sizeof(double) * window), *sq = malloc(sizeof(double) * (window + 1));
    double *corr = malloc(sizeof(double) * lags);
    if (!seg || !sq || !corr) {
        free(seg), free(sq), free(corr);
        return -1;
    }
    for (int n = 0; n < N; n++) {
        const double *row = buf + n * width;
        int64_t prev_lag = lag[n];
        double prev_gain = gain[n];
        for (int f = 0; f < F; f++) {
            const double *w = row + (int64_t)f * hop + keep + hop - window;  /* the window ends with the frame */
            int finite = 1;
            for (int i = 0; i < window; i++) finite &= isfinite(w[i]) != 0;
            for (int i = 0; i < window; i++) seg[i] = finite ? w[i] : 0.0;
            sq[0] = 0.0;
            for (int i = 0; i < window; i++) sq[i + 1] = sq[i] + seg[i] * seg[i];
            double tail_energy = sq[window] - sq[hi];
            for (int k = 0; k < lags; k++) {
                int l = lo + k;
                const double *a = seg + hi, *b = seg + hi - l;
                double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                int i = 0;
                for (; i + 4 <= tail; i += 4) {
                    s0 += a[i] * b[i], s1 += a[i + 1] * b[i + 1];
                    s2 += a[i + 2] * b[i + 2], s3 += a[i + 3] * b[i + 3];
                }
                for (; i < tail; i++) s0 += a[i] * b[i];
                double cross = (s0 + s1) + (s2 + s3);
                double denom = sqrt(tail_energy * (sq[window - l] - sq[hi - l]));
                corr[k] = denom > 1e-12 ? cross / denom : 0.0;
            }
            double best = -1.0;
            for (int k = 1; k < lags - 1; k++)
                if (corr[k] >= corr[k - 1] && corr[k] >= corr[k + 1] && corr[k] > best) best = corr[k];
            int first = 0;
            for (int k = 1; k < lags - 1; k++)
                if (corr[k] >= corr[k - 1] && corr[k] >= corr[k + 1] && corr[k] >= octave * best) {
                    first = k;
                    break;
                }
            double score = best > 0 ? corr[first] : 0.0, g = (score - onset) / (1 - onset);
            g = strength * (g < 0 ? 0.0 : g > 1 ? 1.0 : g) * finite;
            int64_t now_lag = first + lo;
            double old_gain = prev_gain * finite;
            const double *x = row + keep + (int64_t)f * hop;
            double *y = out + (int64_t)n * F * hop + (int64_t)f * hop;
            for (int j = 0; j < hop; j++) {
                double fade = (double)(j + 1) / hop;
                double now = g > 0 ? (x[j] + g * x[j - now_lag]) / (1 + g) : x[j];
                double old = old_gain > 0 ? (x[j] + old_gain * x[j - prev_lag]) / (1 + old_gain) : x[j];
                y[j] = fade * now + (1 - fade) * old;
            }
            prev_lag = now_lag, prev_gain = g;
        }
        lag[n] = prev_lag, gain[n] = prev_gain;
    }
    free(seg), free(sq), free(corr);
    return 0;
}

/* Steps of a sequence added left to right (NumPy's cumsum order, which codec/lowband.py's
 * search uses for the same reason): the search below and its NumPy twin then agree bit for
 * bit. */
static double sum_in_order(const double *a, int n) {
    double s = 0.0;
    for (int i = 0; i < n; i++) s = i ? s + a[i] : a[i];
    return s;
}

/* codec/lowband.py's quantize_arithmetic for M frames of `bins` coefficients over their steps
 * (ratio [M][bins], finite): for each of `gains` gain codes from top + first_shift down
 * (top [M], the code covering the frame's largest ratio; clipped to 0..gain_max; step_of
 * [gain_max + 1] each code's step), the coefficients rounded to steps within -largest..largest
 * (cost [2 * largest + 1] each step's bits), the fit_gains next finer gains than the finest
 * whose rounding fits the frame's bits (bits_of [M]) rounded towards zero where that costs least (_rounded_to_fit),
 * and the gain whose steps fit and come closest wins (the coarsest of ties); a frame that none
 * fits gets gain_max, its steps clipped to as many as fit. -> gain [M], q [M][bins]. Every sum
 * is taken left to right and no product is fused with a sum, as NumPy computes them, so the
 * choices are NumPy's bit for bit. Returns -1 if out of memory. */
__attribute__((optimize("fp-contract=off")))
int rvq_lowband_search(int M, int bins, const double *bits_of, int gains, int first_shift, int fit_gains, int largest,
                       int gain_max, const double *step_of, const double *cost, const double *top,
                       const double *ratio, int64_t *gain, int64_t *q_out) {
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif
    int64_t *q = malloc(sizeof(int64_t) * gains * bins);
    double *tmp = malloc(sizeof(double) * 4 * bins), *err = malloc(sizeof(double) * gains);
    int *fits = malloc(sizeof(int) * gains), *code = malloc(sizeof(int) * gains), *order = malloc(sizeof(int) * bins);
    int64_t *toward = malloc(sizeof(int64_t) * bins);
    if (!q || !tmp || !err || !fits || !code || !order || !toward) {
        free(q), free(tmp), free(err), free(fits), free(code), free(order), free(toward);
        return -1;
    }
    double *saved = tmp + bins, *price = tmp + 2 * bins, *now = tmp + 3 * bins;
    for (int m = 0; m < M; m++) {
        double bits = bits_of[m];
        const double *r = ratio + (int64_t)m * bins;
        int finest = -1;
        for (int g = 0; g < gains; g++) {
            double c = top[m] + (first_shift - g);
            code[g] = (int)(c < 0 ? 0 : c > gain_max ? gain_max : c);
            double step = step_of[code[g]];
            int64_t *qg = q + (int64_t)g * bins;
            for (int i = 0; i < bins; i++) {
                double v = nearbyint(r[i] / step);
                qg[i] = (int64_t)(!(v >= -largest) ? -largest : v > largest ? largest : v);  /* (NaN: the caller's to avoid) */
                tmp[i] = cost[qg[i] + largest];
            }
            fits[g] = sum_in_order(tmp, bins) <= bits;
            if (fits[g]) finest = g;
        }
        int done = -1;
        for (int k = 1; k <= fit_gains; k++) {
            int g = finest + k < gains - 1 ? finest + k : gains - 1;
            if (g == done) continue;
            done = g;
            int64_t *qg = q + (int64_t)g * bins;
            double step = step_of[code[g]];
            for (int i = 0; i < bins; i++) {
                now[i] = cost[qg[i] + largest];
                toward[i] = qg[i] - (qg[i] > 0) + (qg[i] < 0);
                saved[i] = now[i] - cost[toward[i] + largest];
                double a = (double)toward[i] * step - r[i], b = (double)qg[i] * step - r[i];
                double worse = a * a - b * b;
                price[i] = saved[i] > 0 ? worse / (saved[i] > 1e-9 ? saved[i] : 1e-9) : INFINITY;
                order[i] = i;
            }
            for (int i = 1; i < bins; i++) {  /* stable: equal prices keep their order */
                int o = order[i], j = i;
                for (; j > 0 && price[order[j - 1]] > price[o]; j--) order[j] = order[j - 1];
                order[j] = o;
            }
            double over = sum_in_order(now, bins) - bits, run = 0.0;
            int moves = 1;
            for (int j = 0; j < bins; j++) {
                run = j ? run + saved[order[j]] : saved[order[j]];
                moves += run < over;
            }
            for (int j = 0; j < bins && j < moves; j++) {
                int i = order[j];
                if (over > 0 && saved[i] > 0) qg[i] = toward[i];
            }
            for (int i = 0; i < bins; i++) tmp[i] = cost[qg[i] + largest];
            fits[g] = sum_in_order(tmp, bins) <= bits;
        }
        int best = -1;
        for (int g = 0; g < gains; g++) {
            const int64_t *qg = q + (int64_t)g * bins;
            double step = step_of[code[g]];
            for (int i = 0; i < bins; i++) {
                double d = (double)qg[i] * step - r[i];
                tmp[i] = d * d;
            }
            err[g] = sum_in_order(tmp, bins);
            if (fits[g] && (best < 0 || err[g] < err[best])) best = g;
        }
        int64_t *out = q_out + (int64_t)m * bins;
        if (best >= 0) {
            gain[m] = code[best];
            memcpy(out, q + (int64_t)best * bins, sizeof(int64_t) * bins);
            continue;
        }
        double step = step_of[gain_max];  /* none fits: the largest gain, as many steps as fit */
        gain[m] = gain_max;
        int limit = largest;  /* (if none fits even with all steps 0, NumPy's argmax keeps the first) */
        for (int tried = largest; tried >= 0; tried--) {
            for (int i = 0; i < bins; i++) {
                double v = nearbyint(r[i] / step);
                v = !(v >= -largest) ? -largest : v > largest ? largest : v;
                tmp[i] = cost[(int64_t)(v < -tried ? -tried : v > tried ? tried : v) + largest];
            }
            if (sum_in_order(tmp, bins) <= bits) {
                limit = tried;
                break;
            }
        }
        for (int i = 0; i < bins; i++) {
            double v = nearbyint(r[i] / step);
            v = !(v >= -largest) ? -largest : v > largest ? largest : v;
            out[i] = (int64_t)(v < -limit ? -limit : v > limit ? limit : v);
        }
    }
    free(q), free(tmp), free(err), free(fits), free(code), free(order), free(toward);
    return 0;
}
