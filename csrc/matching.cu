// Matching kernels: iterative projective matching (iter_proj) and descriptor refinement
// (refine_matches). One thread per query, bounds-checked (any number of queries). Both repack their
// image input into planes first (one small kernel) so that the per-query reads are 16-byte vectors
// of neighbouring pixels; results are bit-identical to the direct kernels (docs/KERNELS.md).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_fp16.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "bindings.h"
#include "common.cuh"

namespace mast3r_slam {

namespace {

constexpr int kMatchThreads = 128;

__device__ __forceinline__ float clampf(float x, float lo, float hi) { return fminf(fmaxf(x, lo), hi); }

// Bilinear weights with the original's arithmetic (the (1 - d) terms are evaluated in double).
struct Bilinear {
  int i00;  // linear index of (floor(u), floor(v))
  float w11, w12, w21, w22;
};

__device__ __forceinline__ Bilinear bilinear(float u, float v, int W) {
  const int u0 = static_cast<int>(floorf(u));
  const int v0 = static_cast<int>(floorf(v));
  const float du = u - static_cast<float>(u0);
  const float dv = v - static_cast<float>(v0);
  Bilinear b;
  b.i00 = v0 * W + u0;
  b.w11 = du * dv;
  b.w12 = static_cast<float>((1.0 - static_cast<double>(du)) * static_cast<double>(dv));
  b.w21 = static_cast<float>(static_cast<double>(du) * (1.0 - static_cast<double>(dv)));
  b.w22 = static_cast<float>((1.0 - static_cast<double>(du)) * (1.0 - static_cast<double>(dv)));
  return b;
}

__device__ __forceinline__ float ray_error(float* r, const float* target, float* err) {
  const float n = __fsqrt_rn(r[0] * r[0] + r[1] * r[1] + r[2] * r[2]);
  const float inv = static_cast<float>(1.0 / static_cast<double>(n));
#pragma unroll
  for (int j = 0; j < 3; j++) err[j] = r[j] * inv - target[j];
  return err[0] * err[0] + err[1] * err[1] + err[2] * err[2];
}

// Ray image repacked for iter_proj: per pixel (b, n) float4 [r0, r1, r2, gx0], float4 [gx1, gx2,
// gy0, gy1] and float gy2, each in its own plane [B * HW]. A warp then reads 16 + 16 + 4 bytes per
// corner from (mostly) consecutive pixels instead of 9 scalars at a 36-byte stride (9 cache lines
// per scalar load). The arithmetic does not change.
__global__ void pack_rays_kernel(const float* __restrict__ src,  // [B * HW, 9]
                                 float4* __restrict__ plane_a,  // [B * HW]
                                 float4* __restrict__ plane_b,  // [B * HW]
                                 float* __restrict__ plane_c,  // [B * HW]
                                 int total) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const float* s = src + 9 * static_cast<int64_t>(i);
  plane_a[i] = make_float4(s[0], s[1], s[2], s[3]);
  plane_b[i] = make_float4(s[4], s[5], s[6], s[7]);
  plane_c[i] = s[8];
}

// The same expression (and so the same rounding/contraction) as the original's per-channel sum.
__device__ __forceinline__ float interp(const Bilinear& b, float x11, float x12, float x21, float x22) {
  return b.w11 * x11 + b.w12 * x12 + b.w21 * x21 + b.w22 * x22;
}

// All 9 channels at the bilinear position b of the packed ray image (pixel indices relative to the
// image of the query's pair).
__device__ __forceinline__ void sample9(const float4* __restrict__ pa, const float4* __restrict__ pb, const float* __restrict__ pc,
                                        const Bilinear& b, int W, float* s) {
  const int i22 = b.i00;  // (u0, v0)
  const int i21 = i22 + 1;  // (u0 + 1, v0)
  const int i12 = i22 + W;  // (u0, v0 + 1)
  const int i11 = i12 + 1;  // (u0 + 1, v0 + 1)
  const float4 a11 = pa[i11], a12 = pa[i12], a21 = pa[i21], a22 = pa[i22];
  const float4 b11 = pb[i11], b12 = pb[i12], b21 = pb[i21], b22 = pb[i22];
  const float c11 = pc[i11], c12 = pc[i12], c21 = pc[i21], c22 = pc[i22];
  s[0] = interp(b, a11.x, a12.x, a21.x, a22.x);
  s[1] = interp(b, a11.y, a12.y, a21.y, a22.y);
  s[2] = interp(b, a11.z, a12.z, a21.z, a22.z);
  s[3] = interp(b, a11.w, a12.w, a21.w, a22.w);
  s[4] = interp(b, b11.x, b12.x, b21.x, b22.x);
  s[5] = interp(b, b11.y, b12.y, b21.y, b22.y);
  s[6] = interp(b, b11.z, b12.z, b21.z, b22.z);
  s[7] = interp(b, b11.w, b12.w, b21.w, b22.w);
  s[8] = interp(b, c11, c12, c21, c22);
}

// Per query: max_iter LM steps from (u, v) (already clamped); updates (u, v) and returns the
// converged flag. The original interpolates the 9 channels at the current position and the 3 ray
// channels at the proposal in every iteration; here the 9 channels are interpolated at the
// proposal only and kept when it is accepted (the same numbers: the next iteration of the
// original re-interpolates exactly there), 9 instead of 12 channels per iteration.
__device__ __forceinline__ bool lm_iterate(const float4* __restrict__ pa, const float4* __restrict__ pb, const float* __restrict__ pc,
                                           const float* target, float& u, float& v, int H, int W, int max_iter, float lambda_init,
                                           float cost_thresh) {
  float lambda = lambda_init;
  bool conv = false;
  if (max_iter > 0) {
    float s[9], err[3];
    sample9(pa, pb, pc, bilinear(u, v, W), W, s);
    float cost = ray_error(s, target, err);
    for (int it = 0; it < max_iter; it++) {
      const float* gx = s + 3;
      const float* gy = s + 6;
      float A00 = gx[0] * gx[0] + gx[1] * gx[1] + gx[2] * gx[2];
      const float A01 = gx[0] * gy[0] + gx[1] * gy[1] + gx[2] * gy[2];
      float A11 = gy[0] * gy[0] + gy[1] * gy[1] + gy[2] * gy[2];
      const float b0 = -(err[0] * gx[0] + err[1] * gx[1] + err[2] * gx[2]);
      const float b1 = -(err[0] * gy[0] + err[1] * gy[1] + err[2] * gy[2]);
      A00 += lambda;
      A11 += lambda;
      const float det_inv = static_cast<float>(1.0 / static_cast<double>(A00 * A11 - A01 * A01));
      const float u_new = clampf(u + det_inv * (A11 * b0 - A01 * b1), 1.0f, W - 2.0f);
      const float v_new = clampf(v + det_inv * (-A01 * b0 + A00 * b1), 1.0f, H - 2.0f);
      float s_new[9], err_new[3];
      sample9(pa, pb, pc, bilinear(u_new, v_new, W), W, s_new);
      const float new_cost = ray_error(s_new, target, err_new);
      if (new_cost < cost) {
        u = u_new;
        v = v_new;
#pragma unroll
        for (int j = 0; j < 9; j++) s[j] = s_new[j];
#pragma unroll
        for (int j = 0; j < 3; j++) err[j] = err_new[j];
        lambda = static_cast<float>(static_cast<double>(lambda) * 0.1);
        conv = new_cost < cost_thresh;
        cost = new_cost;
      } else {
        lambda = static_cast<float>(static_cast<double>(lambda) * 10.0);
        conv = cost < cost_thresh;
      }
    }
  }
  return conv;
}

__global__ void iter_proj_kernel(const float4* __restrict__ plane_a,  // [B, HW] packed ray image
                                 const float4* __restrict__ plane_b,  // [B, HW]
                                 const float* __restrict__ plane_c,  // [B, HW]
                                 const float* __restrict__ target_rays,  // [B, N, 3]
                                 const float* __restrict__ p_init,  // [B, N, 2]
                                 float* __restrict__ p_out,  // [B, N, 2]
                                 bool* __restrict__ converged,  // [B, N]
                                 int H, int W, int N, int max_iter, float lambda_init, float cost_thresh) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  const int b = blockIdx.y;
  if (n >= N) return;
  const int64_t img = static_cast<int64_t>(b) * H * W;
  const int64_t q = static_cast<int64_t>(b) * N + n;
  const float target[3] = {target_rays[3 * q], target_rays[3 * q + 1], target_rays[3 * q + 2]};
  float u = clampf(p_init[2 * q], 1.0f, W - 2.0f);
  float v = clampf(p_init[2 * q + 1], 1.0f, H - 2.0f);
  const bool conv = lm_iterate(plane_a + img, plane_b + img, plane_c + img, target, u, v, H, W, max_iter, lambda_init, cost_thresh);
  p_out[2 * q] = u;
  p_out[2 * q + 1] = v;
  converged[q] = conv;
}

// ------------------------------------------------------------------------------------------------
// Fused preparation (matching.prepare_rays / match): F.normalize of the points and the reflect-
// padded 3x3 gradient convolutions in one kernel, with PyTorch's arithmetic so that the results
// are bit-identical:
// - F.normalize(x) = x / clamp_min(||x||, 1e-12), ||x|| from ATen's reduction kernel. For a
//   reduction over 3 contiguous floats it runs 2 threads per output (block width last_pow2(3)):
//   thread 0 sums x0^2 and x2^2, thread 1 has x1^2, then a shuffle adds the two, so
//   ||x|| = sqrt((x0^2 + x2^2) + x1^2), each operation rounded (norm_mode 0). Modes 1-3 are the
//   other plausible orders, kept for verification on a new PyTorch version (bench_match_kernels.py
//   prints which modes match); torch.linalg.norm of match's distance check uses the same reduction.
// - the depthwise conv2d kernel accumulates `value += w * x` (an FMA) over the 3x3 taps, rows
//   outer, starting from 0, all 9 taps (0 * NaN propagates NaN as in PyTorch).
// ------------------------------------------------------------------------------------------------
__device__ __forceinline__ float norm3(float x0, float x1, float x2, int mode) {
  const float a = __fmul_rn(x0, x0), b = __fmul_rn(x1, x1), c = __fmul_rn(x2, x2);
  float s;
  switch (mode) {
    case 1: s = __fadd_rn(__fadd_rn(a, b), c); break;
    case 2: s = __fmaf_rn(x2, x2, __fmaf_rn(x1, x1, a)); break;
    case 3: s = __fadd_rn(__fmaf_rn(x2, x2, a), b); break;
    default: s = __fadd_rn(__fadd_rn(a, c), b); break;
  }
  return __fsqrt_rn(s);
}

__device__ __forceinline__ void unit3(const float* __restrict__ x, int mode, float* r) {
  const float x0 = __ldg(x), x1 = __ldg(x + 1), x2 = __ldg(x + 2);
  float n = norm3(x0, x1, x2, mode);
  n = n < 1e-12f ? 1e-12f : n;  // clamp_min(eps); NaN stays NaN
  r[0] = __fdiv_rn(x0, n);
  r[1] = __fdiv_rn(x1, n);
  r[2] = __fdiv_rn(x2, n);
}

__device__ __forceinline__ int reflect_index(int i, int n) { return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i); }

// One thread per pixel (x, y) of image b. kPlanes: write the packed planes of iter_proj (match);
// otherwise rays_with_grad [B, H, W, 9] and the normalised X21 (prepare_rays).
template <bool kPlanes>
__global__ void prep_rays_kernel(const float* __restrict__ X11,  // [B, H, W, 3]
                                 const float* __restrict__ X21,  // [B, H, W, 3] (only !kPlanes)
                                 float4* __restrict__ plane_a, float4* __restrict__ plane_b, float* __restrict__ plane_c,
                                 float* __restrict__ rays9,  // [B, H, W, 9] (!kPlanes)
                                 float* __restrict__ target,  // [B, HW, 3] (!kPlanes)
                                 int H, int W, int mode) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x;
  const int y = blockIdx.y;
  const int b = blockIdx.z;
  if (x >= W) return;
  const int64_t img = static_cast<int64_t>(b) * H * W;
  const float* src = X11 + 3 * img;
  const int xs[3] = {reflect_index(x - 1, W), x, reflect_index(x + 1, W)};
  const int ys[3] = {reflect_index(y - 1, H), y, reflect_index(y + 1, H)};
  float r[3][3][3];  // [kH][kW][channel]
#pragma unroll
  for (int i = 0; i < 3; i++) {
#pragma unroll
    for (int j = 0; j < 3; j++) unit3(src + 3 * (static_cast<int64_t>(ys[i]) * W + xs[j]), mode, r[i][j]);
  }
  // _SCHARR / 32 (exact in float): kx[kH][kW], ky = kx^T
  const float kx[3][3] = {{-0.09375f, 0.0f, 0.09375f}, {-0.3125f, 0.0f, 0.3125f}, {-0.09375f, 0.0f, 0.09375f}};
  float gx[3], gy[3];
#pragma unroll
  for (int c = 0; c < 3; c++) {
    float ax = 0.0f, ay = 0.0f;
#pragma unroll
    for (int i = 0; i < 3; i++) {
#pragma unroll
      for (int j = 0; j < 3; j++) {
        ax = __fmaf_rn(kx[i][j], r[i][j][c], ax);
        ay = __fmaf_rn(kx[j][i], r[i][j][c], ay);
      }
    }
    gx[c] = ax;
    gy[c] = ay;
  }
  const int64_t i = img + static_cast<int64_t>(y) * W + x;
  if (kPlanes) {
    plane_a[i] = make_float4(r[1][1][0], r[1][1][1], r[1][1][2], gx[0]);
    plane_b[i] = make_float4(gx[1], gx[2], gy[0], gy[1]);
    plane_c[i] = gy[2];
  } else {
    float* o = rays9 + 9 * i;
    o[0] = r[1][1][0]; o[1] = r[1][1][1]; o[2] = r[1][1][2];
    o[3] = gx[0]; o[4] = gx[1]; o[5] = gx[2];
    o[6] = gy[0]; o[7] = gy[1]; o[8] = gy[2];
    unit3(X21 + 3 * i, mode, target + 3 * i);
  }
}

// match's projective stage for every pixel q of image 2 (N = HW): start at the identity or at
// idx_init (lin_to_pixel: floor division and modulo), the LM iterations on the packed planes with
// the normalised X21(q) as target, then the epilogue of match(): p1 = truncated position,
// lin = u + W v, valid = converged && ||X11(p1) - X21(q)|| < dist_thresh (float32 compare).
__global__ void match_project_kernel(const float4* __restrict__ plane_a, const float4* __restrict__ plane_b,
                                     const float* __restrict__ plane_c,
                                     const float* __restrict__ X11,  // [B, HW, 3]
                                     const float* __restrict__ X21,  // [B, HW, 3]
                                     const int64_t* __restrict__ idx_init,  // [B, HW] or nullptr (identity)
                                     int64_t* __restrict__ p1_out,  // [B, HW, 2]
                                     int64_t* __restrict__ lin_out,  // [B, HW]
                                     bool* __restrict__ conv_out,  // [B, HW]
                                     bool* __restrict__ valid_out,  // [B, HW]
                                     int H, int W, int max_iter, float lambda_init, float cost_thresh, float dist_thresh, int mode) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  const int b = blockIdx.y;
  const int N = H * W;
  if (n >= N) return;
  const int64_t img = static_cast<int64_t>(b) * N;
  const int64_t q = img + n;
  float target[3];
  unit3(X21 + 3 * q, mode, target);
  float u0, v0;
  if (idx_init != nullptr) {
    const int64_t idx = idx_init[q];
    int64_t vi = idx / W;
    int64_t ui = idx - vi * W;
    if (ui < 0) {  // Python's floor semantics for negative indices
      ui += W;
      vi -= 1;
    }
    u0 = static_cast<float>(ui);
    v0 = static_cast<float>(vi);
  } else {
    const int vi = n / W;
    u0 = static_cast<float>(n - vi * W);
    v0 = static_cast<float>(vi);
  }
  float u = clampf(u0, 1.0f, W - 2.0f);
  float v = clampf(v0, 1.0f, H - 2.0f);
  const bool conv = lm_iterate(plane_a + img, plane_b + img, plane_c + img, target, u, v, H, W, max_iter, lambda_init, cost_thresh);
  const int64_t pu = static_cast<int64_t>(u), pv = static_cast<int64_t>(v);  // truncation (.long())
  const int64_t lin = pu + static_cast<int64_t>(W) * pv;
  const float* xp = X11 + 3 * (img + lin);
  const float* xq = X21 + 3 * q;
  const float dist = norm3(__fsub_rn(__ldg(xp), __ldg(xq)), __fsub_rn(__ldg(xp + 1), __ldg(xq + 1)),
                           __fsub_rn(__ldg(xp + 2), __ldg(xq + 2)), mode);
  p1_out[2 * q] = pu;
  p1_out[2 * q + 1] = pv;
  lin_out[q] = lin;
  conv_out[q] = conv;
  valid_out[q] = conv && (dist < dist_thresh);
}

// Dot product with the original's rounding: float16 after every multiply and every add.
__device__ __forceinline__ float dot_desc(const __half* a, const __half* b, int F) {
  float s = 0.0f;
  for (int k = 0; k < F; k++) {
    const float p = __half2float(__float2half_rn(__half2float(a[k]) * __half2float(b[k])));
    s = __half2float(__float2half_rn(s + p));
  }
  return s;
}

__device__ __forceinline__ float dot_desc(const float* a, const float* b, int F) {
  float s = 0.0f;
  for (int k = 0; k < F; k++) s += a[k] * b[k];
  return s;
}

// Generic refinement: float32 descriptors, or float16 ones with F not in {8, 16, 24, 32}.
template <typename T>
__global__ void refine_matches_kernel(const T* __restrict__ D11,  // [B, H, W, F]
                                      const T* __restrict__ D21,  // [B, N, F]
                                      const int64_t* __restrict__ p1,  // [B, N, 2]
                                      int64_t* __restrict__ p1_new,  // [B, N, 2]
                                      int H, int W, int F, int N, int radius, int dilation_max) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  const int b = blockIdx.y;
  if (n >= N) return;
  const int64_t q = static_cast<int64_t>(b) * N + n;
  const T* d2 = D21 + q * F;
  const T* d1 = D11 + static_cast<int64_t>(b) * H * W * F;
  int64_t u0 = p1[2 * q], v0 = p1[2 * q + 1];
  int64_t u_best = u0, v_best = v0;
  float best = 0.0f;  // the original's "min" of the type: only positive similarities can win
  for (int d = dilation_max; d > 0; d--) {
    const int rd = radius * d;
    for (int i = -rd; i <= rd; i += d) {  // u outer
      for (int j = -rd; j <= rd; j += d) {  // v inner
        const int64_t u = u0 + i, v = v0 + j;
        if (u < 0 || u >= W || v < 0 || v >= H) continue;
        const float score = dot_desc(d2, d1 + (v * W + u) * F, F);
        if (score > best) {
          best = score;
          u_best = u;
          v_best = v;
        }
      }
    }
    u0 = u_best;  // re-centre on the best so far
    v0 = v_best;
  }
  p1_new[2 * q] = u_best;
  p1_new[2 * q + 1] = v_best;
}

// ------------------------------------------------------------------------------------------------
// float16 fast path (F = 8 kVec, kVec = 1..4): descriptors of image 1 repacked into kVec planes of
// 16-byte groups, [B, kVec, HW] x 8 halves. A warp scoring one candidate offset then reads kVec
// 16-byte vectors per thread from (mostly) consecutive pixels, 4 cache lines per load instead of
// the 12 lines that 24 scalar 2-byte loads at a 48-byte stride touch each. The query descriptor
// stays in registers. Arithmetic: __hmul2_rn / __hadd_rn are correctly rounded float16 operations
// that the compiler may not contract into FMAs, i.e. exactly the original's c10::Half sequence
// (product rounded to float16, then the running sum rounded to float16, in channel order): a float
// result of two float16 operands rounded once more to float16 equals the correctly rounded float16
// result (float has 24 >= 2 * 11 + 2 significand bits).
// ------------------------------------------------------------------------------------------------
// Where group i of D11 [B, HW, kVec] (16-byte groups, source order) goes in the planes
// [B, kVec, HW] (pack_desc_kernel and pack_desc_cast_kernel).
__device__ __forceinline__ int packed_index(int i, int HW, int kVec) {
  const int k = i % kVec;
  const int bp = i / kVec;
  const int b = bp / HW;
  const int p = bp - b * HW;
  return (b * kVec + k) * HW + p;
}

__global__ void pack_desc_kernel(const uint4* __restrict__ src,  // [B, HW, kVec]
                                 uint4* __restrict__ dst,  // [B, kVec, HW]
                                 int HW, int kVec, int total) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= total) return;
  dst[packed_index(i, HW, kVec)] = src[i];
}

__device__ __forceinline__ __half2 as_half2(unsigned int w) {
  __half2 h;
  memcpy(&h, &w, sizeof(h));
  return h;
}

// s += q[c] * x[c] for the 8 channels of one 16-byte group, rounded as the original.
__device__ __forceinline__ __half dot8(const __half2* q, const uint4& x, __half s) {
  const unsigned int w[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
  for (int m = 0; m < 4; m++) {
    const __half2 p = __hmul2_rn(q[m], as_half2(w[m]));
    s = __hadd_rn(s, __low2half(p));  // channel 2m (the lower address)
    s = __hadd_rn(s, __high2half(p));  // channel 2m + 1
  }
  return s;
}

// The score of one candidate: the kVec 16-byte groups x dotted with the query, from +0, in channel
// order; with keep_best below, refine_tile_kernel's per-candidate step, the same expressions as
// refine_half_kernel's loop body (which keeps its own copy: its generated code is unchanged).
template <int kVec>
__device__ __forceinline__ __half score_desc(const __half2* qd, const uint4* x) {
  __half s = __ushort_as_half(0);  // +0
#pragma unroll
  for (int k = 0; k < kVec; k++) s = dot8(qd + 4 * k, x[k], s);
  return s;
}

// The original's choice, independent of the visiting order within a level: a candidate with scan
// index o (u outer, v inner) replaces the best if its score is larger, or equal with a smaller
// index; the best carried over from the previous levels has o_best = -1, so only a strictly larger
// score replaces it. NaN scores never win.
__device__ __forceinline__ void keep_best(__half s, int o, int u, int v, __half& best, int& o_best, int& u_best, int& v_best) {
  if (__hgt(s, best) || (__heq(s, best) && o < o_best)) {
    best = s;
    o_best = o;
    u_best = u;
    v_best = v;
  }
}

// The query descriptor as 4 kVec half2 (channels 2m, 2m + 1): from 16-byte groups (the float16
// tensor, aligned), from float16 scalars (any alignment) or from float32 (cast to float16 with
// round-to-nearest-even, as Tensor.to(torch.float16)).
template <int kVec>
__device__ __forceinline__ void load_query(const uint4* __restrict__ D21, int64_t q, __half2* qd) {
#pragma unroll
  for (int k = 0; k < kVec; k++) {
    const uint4 x = D21[q * kVec + k];
    qd[4 * k] = as_half2(x.x);
    qd[4 * k + 1] = as_half2(x.y);
    qd[4 * k + 2] = as_half2(x.z);
    qd[4 * k + 3] = as_half2(x.w);
  }
}

template <int kVec>
__device__ __forceinline__ void load_query(const __half* __restrict__ D21, int64_t q, __half2* qd) {
  const __half* s = D21 + q * (8 * kVec);
#pragma unroll
  for (int m = 0; m < 4 * kVec; m++) qd[m] = __halves2half2(s[2 * m], s[2 * m + 1]);
}

template <int kVec>
__device__ __forceinline__ void load_query(const float* __restrict__ D21, int64_t q, __half2* qd) {
  const float* s = D21 + q * (8 * kVec);
#pragma unroll
  for (int m = 0; m < 4 * kVec; m++) qd[m] = __halves2half2(__float2half_rn(__ldg(s + 2 * m)), __float2half_rn(__ldg(s + 2 * m + 1)));
}

// kOut: 0 = pixels [B, N, 2] (refine_matches), 1 = linear indices u + W v [B, N] (match's output),
// 2 = linear indices with N = HW and each block on a kTileW x kTileH tile of query pixels
// (blockIdx.x = tile index): the candidate windows of a block's queries then overlap far more than
// along one image row (footprint (16 + 30) x (8 + 30) pixels per 128 queries at radius 3,
// dilation 5, instead of (128 + 30) x 31), so more candidate loads hit L1. Per-query arithmetic is
// the same in every mode.
constexpr int kTileW = 16;
constexpr int kTileH = kMatchThreads / kTileW;

template <int kVec, typename TQ, int kOut>
__global__ void refine_half_kernel(const uint4* __restrict__ D11p,  // [B, kVec, HW] (8 halves each)
                                   const TQ* __restrict__ D21,  // [B, N, 8 kVec] (uint4: [B, N, kVec])
                                   const int64_t* __restrict__ p1,  // [B, N, 2]
                                   int64_t* __restrict__ p1_new,  // [B, N, 2] or [B, N] (kOut > 0)
                                   int H, int W, int N, int radius, int dilation_max) {
  int n;
  if (kOut == 2) {
    const int tiles_x = (W + kTileW - 1) / kTileW;
    const int ty = blockIdx.x / tiles_x;
    const int x = (blockIdx.x - ty * tiles_x) * kTileW + static_cast<int>(threadIdx.x) % kTileW;
    const int y = ty * kTileH + static_cast<int>(threadIdx.x) / kTileW;
    if (x >= W || y >= H) return;
    n = y * W + x;
  } else {
    n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
  }
  const int b = blockIdx.y;
  const int HW = H * W;
  const uint4* img = D11p + static_cast<int64_t>(b) * kVec * HW;
  const int64_t q = static_cast<int64_t>(b) * N + n;
  __half2 qd[4 * kVec];
  load_query<kVec>(D21, q, qd);
  int u0 = static_cast<int>(p1[2 * q]);
  int v0 = static_cast<int>(p1[2 * q + 1]);
  int u_best = u0, v_best = v0;
  const __half zero = __ushort_as_half(0);  // +0
  __half best = zero;  // the original's numeric_limits<c10::Half>::min() is 0: only positive scores win
  const int side = 2 * radius + 1;
  for (int d = dilation_max; d > 0; d--) {
    const int rd = radius * d;
    // Rows outer, so that a thread's consecutive candidates are d pixels apart on one row and a
    // warp's next candidate mostly reads the cache lines its previous one loaded (the original's
    // order, u outer, jumps to another row at every candidate). Its scan order still decides ties:
    // among equal maxima of a level the smallest scan index (u outer, v inner) wins, and a level
    // must beat the best of the previous levels strictly (o_best = -1 stands for that best).
    int o_best = -1;
    for (int jv = 0; jv < side; jv++) {
      const int v = v0 - rd + jv * d;
      if (static_cast<unsigned>(v) >= static_cast<unsigned>(H)) continue;  // a whole row outside
      const uint4* row = img + v * W;
      for (int iu = 0; iu < side; iu++) {
        const int u = u0 - rd + iu * d;
        if (static_cast<unsigned>(u) >= static_cast<unsigned>(W)) continue;
        const uint4* c = row + u;
        uint4 x[kVec];
#pragma unroll
        for (int k = 0; k < kVec; k++) x[k] = c[k * HW];
        __half s = zero;
#pragma unroll
        for (int k = 0; k < kVec; k++) s = dot8(qd + 4 * k, x[k], s);
        const int o = iu * side + jv;  // index in the original's scan order
        if (__hgt(s, best) || (__heq(s, best) && o < o_best)) {
          best = s;
          o_best = o;
          u_best = u;
          v_best = v;
        }
      }
    }
    u0 = u_best;  // re-centre on the best so far
    v0 = v_best;
  }
  if (kOut > 0) {
    p1_new[q] = static_cast<int64_t>(u_best) + static_cast<int64_t>(W) * v_best;
  } else {
    p1_new[2 * q] = u_best;
    p1_new[2 * q + 1] = v_best;
  }
}

// ------------------------------------------------------------------------------------------------
// Refinement variants for match's case (refine_matches_lin with tiled = true, F = 24, radius 3),
// chosen at run time with MAST3R_SLAM_REFINE_VARIANT (refine_variant(); 0 or unset: the
// refine_half_kernel above; other shapes always use it). Every variant scores a candidate with
// score_desc and chooses with keep_best, so it computes the same float16 scores and, since
// keep_best's choice does not depend on the visiting order within a level, the same matches.
// Blocks take kTW x kTH tiles of query pixels (thread t: column t % kTW, row t / kTW).
//   kWW = 0: candidates read from global memory as in refine_half_kernel, but the radius is a
//            compile-time constant: a row of 2 kR + 1 candidates is unrolled, its addresses
//            clamped into the image (out-of-image candidates are loaded but not scored), so a
//            thread has 7 independent loads and float16 chains in flight instead of one.
//   kWW > 0: shared-memory window. The footprint of a 16 x 16 tile at dilation 5 is 46 x 46 pixels
//            read by 256 x 49 candidates; through L1 with ~10 resident blocks per SM (each ~100 KB
//            of footprint) most of those reads went to L2. Per level the block stages a window of
//            the packed descriptor image around its queries' centres into shared memory (coalesced
//            16-byte loads, each pixel once), then reads candidates from there. Where the centres
//            are not a smooth shift of the tile (noise, outliers, starts outside the image), the
//            candidates outside the window are read from global memory: any input gives the same
//            result, only the speed depends on it. The window: kTW + 2 kR d + 2 kSlack columns by
//            kTH + 2 kR d + 2 kSlack rows (at most kWW x kWH), centred on the tile moved by the
//            mean of (centre - query pixel) over the tile (integer, one block reduction per level).
//            Two barriers per level; 16 x 16 tiles with a 48 x 48 window (110.6 KB) run 2 blocks
//            per SM, so one block's staging overlaps the other's scoring.
// ------------------------------------------------------------------------------------------------
constexpr int kSlack = 2;

__device__ __forceinline__ int warp_sum(int x) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) x += __shfl_xor_sync(0xffffffffu, x, m);
  return x;
}

__device__ __forceinline__ int clamp_offset(int c, int p) {  // centre - pixel, bounded (no overflow in the block sum)
  const long long o = static_cast<long long>(c) - p;
  return static_cast<int>(o < -65536 ? -65536 : (o > 65536 ? 65536 : o));
}

template <int kVec, typename TQ, int kR, int kTW, int kTH, int kWW, int kWH>
__global__ void __launch_bounds__(kTW * kTH, 65536 / (kTW * kTH * 128))
    refine_tile_kernel(const uint4* __restrict__ D11p,  // [B, kVec, HW] (8 halves each)
                       const TQ* __restrict__ D21,  // [B, HW, 8 kVec]
                       const int64_t* __restrict__ p1,  // [B, HW, 2]
                       int64_t* __restrict__ p1_new,  // [B, HW] linear indices
                       int H, int W, int dilation_max) {
  constexpr int kThreads = kTW * kTH;
  constexpr int kWarps = kThreads / 32;
  constexpr bool kSmem = kWW > 0;
  constexpr int kSide = 2 * kR + 1;
  static_assert(kThreads % 32 == 0, "whole warps");
  extern __shared__ uint4 win[];  // [kVec][RH][RW] (kSmem)
  __shared__ int red[2][kWarps];
  const int tiles_x = (W + kTW - 1) / kTW;
  const int ty = blockIdx.x / tiles_x;
  const int x0 = (blockIdx.x - ty * tiles_x) * kTW;
  const int y0 = ty * kTH;
  const int x = x0 + static_cast<int>(threadIdx.x) % kTW;
  const int y = y0 + static_cast<int>(threadIdx.x) / kTW;
  const bool active = x < W && y < H;
  if (!kSmem && !active) return;  // (with kSmem every thread takes part in the barriers)
  const int b = blockIdx.y;
  const int HW = H * W;
  const uint4* img = D11p + static_cast<int64_t>(b) * kVec * HW;
  const int64_t q = static_cast<int64_t>(b) * HW + (active ? y * W + x : 0);
  __half2 qd[4 * kVec];
  int u0 = 0, v0 = 0;
  if (active) {
    load_query<kVec>(D21, q, qd);
    u0 = static_cast<int>(p1[2 * q]);
    v0 = static_cast<int>(p1[2 * q + 1]);
  }
  int u_best = u0, v_best = v0;
  __half best = __ushort_as_half(0);  // +0: only positive scores win
  for (int d = dilation_max; d > 0; d--) {
    const int rd = kR * d;
    int ox = 0, oy = 0, RW = 1, RH = 1;
    if (kSmem) {
      int du = active ? clamp_offset(u0, x) : 0;
      int dv = active ? clamp_offset(v0, y) : 0;
      du = warp_sum(du);
      dv = warp_sum(dv);
      if (threadIdx.x % 32 == 0) {
        red[0][threadIdx.x / 32] = du;
        red[1][threadIdx.x / 32] = dv;
      }
      __syncthreads();  // red complete; every thread is done with the previous level's window
      int su = 0, sv = 0;
#pragma unroll
      for (int w = 0; w < kWarps; w++) {
        su += red[0][w];
        sv += red[1][w];
      }
      const int cnt = min(W - x0, kTW) * min(H - y0, kTH);  // active queries of the tile (>= 1)
      RW = min(kWW, kTW + 2 * rd + 2 * kSlack);
      RH = min(kWH, kTH + 2 * rd + 2 * kSlack);
      ox = x0 + su / cnt - rd - (RW - kTW - 2 * rd) / 2;
      oy = y0 + sv / cnt - rd - (RH - kTH - 2 * rd) / 2;
      // Staging: warp w copies rows w, w + kWarps, ... of each plane, lane l columns l, l + 32, ...;
      // kBatch rows are loaded into registers before they are stored (kBatch * kCols loads in
      // flight per thread). Pixels outside the image are not copied (never read as candidates).
      const int plane = RW * RH;
      const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
      constexpr int kCols = kWW > 32 ? (kWW + 31) / 32 : 1;
      constexpr int kBatch = 4;
#pragma unroll 1
      for (int k = 0; k < kVec; k++) {
        const uint4* src = img + k * HW;
        uint4* dst = win + k * plane;
#pragma unroll 1
        for (int py0 = warp; py0 < RH; py0 += kBatch * kWarps) {
          uint4 t[kBatch][kCols];
          bool copy[kBatch][kCols];
#pragma unroll
          for (int j = 0; j < kBatch; j++) {
            const int py = py0 + j * kWarps, gy = oy + py;
#pragma unroll
            for (int c = 0; c < kCols; c++) {
              const int px = lane + 32 * c, gx = ox + px;
              copy[j][c] = py < RH && px < RW && static_cast<unsigned>(gx) < static_cast<unsigned>(W) &&
                           static_cast<unsigned>(gy) < static_cast<unsigned>(H);
              if (copy[j][c]) t[j][c] = src[gy * W + gx];
            }
          }
#pragma unroll
          for (int j = 0; j < kBatch; j++) {
#pragma unroll
            for (int c = 0; c < kCols; c++) {
              if (copy[j][c]) dst[(py0 + j * kWarps) * RW + lane + 32 * c] = t[j][c];
            }
          }
        }
      }
      __syncthreads();  // window staged; red is next written after this barrier, read before it: no race
    }
    if (active) {
      const int plane = RW * RH;
      int o_best = -1;
#pragma unroll 1
      for (int jv = 0; jv < kSide; jv++) {
        const int v = v0 - rd + jv * d;
        if (static_cast<unsigned>(v) >= static_cast<unsigned>(H)) continue;  // a whole row outside
        const uint4* grow = img + v * W;
        const int ly = v - oy;
        const bool row_in = kSmem && static_cast<unsigned>(ly) < static_cast<unsigned>(RH);
        __half s[kSide];
        bool ok[kSide];
#pragma unroll
        for (int iu = 0; iu < kSide; iu++) {
          const int u = u0 - rd + iu * d;
          ok[iu] = static_cast<unsigned>(u) < static_cast<unsigned>(W);
          uint4 xv[kVec];
          if (kSmem) {
            const int lx = u - ox;
            const bool in_win = row_in && static_cast<unsigned>(lx) < static_cast<unsigned>(RW);
            if (ok[iu] && !in_win) {
              const uint4* c = grow + u;
#pragma unroll
              for (int k = 0; k < kVec; k++) xv[k] = c[k * HW];
            } else {  // in the window, or not scored: any window pixel will do
              const int cx = min(max(lx, 0), RW - 1), cy = min(max(ly, 0), RH - 1);
              const uint4* c = win + cy * RW + cx;
#pragma unroll
              for (int k = 0; k < kVec; k++) xv[k] = c[k * plane];
            }
          } else {
            const uint4* c = grow + min(max(u, 0), W - 1);
#pragma unroll
            for (int k = 0; k < kVec; k++) xv[k] = c[k * HW];
          }
          s[iu] = score_desc<kVec>(qd, xv);
        }
#pragma unroll
        for (int iu = 0; iu < kSide; iu++) {
          if (ok[iu]) keep_best(s[iu], iu * kSide + jv, u0 - rd + iu * d, v, best, o_best, u_best, v_best);
        }
      }
      u0 = u_best;  // re-centre on the best so far
      v0 = v_best;
    }
  }
  if (active) p1_new[q] = static_cast<int64_t>(u_best) + static_cast<int64_t>(W) * v_best;
}

// D11 [B, HW, 8 kVec] float32 or float16 -> planes [B, kVec, HW] of 8 float16 (cast with
// round-to-nearest-even as Tensor.to(torch.float16); scalar loads: any alignment).
template <typename T>
__device__ __forceinline__ __half to_half(T x);
template <>
__device__ __forceinline__ __half to_half<float>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __half to_half<__half>(__half x) { return x; }

template <typename T>
__global__ void pack_desc_cast_kernel(const T* __restrict__ src, uint4* __restrict__ dst, int HW, int kVec, int total) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const T* s = src + 8 * static_cast<int64_t>(i);
  __half2 h[4];
#pragma unroll
  for (int m = 0; m < 4; m++) h[m] = __halves2half2(to_half<T>(s[2 * m]), to_half<T>(s[2 * m + 1]));
  uint4 out;
  memcpy(&out, h, sizeof(out));
  dst[packed_index(i, HW, kVec)] = out;
}

}  // namespace

std::vector<at::Tensor> iter_proj_cuda(const at::Tensor& rays_with_grad, const at::Tensor& target_rays, const at::Tensor& p_init,
                                       int64_t max_iter, double lambda_init, double cost_thresh) {
  M3R_CHECK_INPUT(rays_with_grad, at::kFloat);
  M3R_CHECK_INPUT(target_rays, at::kFloat);
  M3R_CHECK_INPUT(p_init, at::kFloat);
  TORCH_CHECK(rays_with_grad.dim() == 4 && rays_with_grad.size(3) == 9, "iter_proj: rays_with_grad must be [B, H, W, 9]");
  const c10::cuda::CUDAGuard guard(rays_with_grad.device());
  const int B = rays_with_grad.size(0), H = rays_with_grad.size(1), W = rays_with_grad.size(2);
  const int N = p_init.size(1);
  auto p = at::empty({B, N, 2}, p_init.options());
  auto conv = at::empty({B, N}, p_init.options().dtype(at::kBool));  // every entry is written
  if (B > 0 && N > 0) {
    const int64_t total = static_cast<int64_t>(B) * H * W;
    TORCH_CHECK(9 * total < INT32_MAX, "iter_proj: the ray images are too large (B * H * W * 9 must be < 2^31)");
    auto stream = c10::cuda::getCurrentCUDAStream();
    auto packed = at::empty({9 * total}, rays_with_grad.options());
    float* base = packed.data_ptr<float>();  // 256-byte aligned: planes at 0, 4 total, 8 total floats
    float4* plane_a = reinterpret_cast<float4*>(base);
    float4* plane_b = reinterpret_cast<float4*>(base + 4 * total);
    float* plane_c = base + 8 * total;
    pack_rays_kernel<<<static_cast<unsigned>((total + 255) / 256), 256, 0, stream>>>(rays_with_grad.data_ptr<float>(), plane_a,
                                                                                      plane_b, plane_c, static_cast<int>(total));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const dim3 grid((N + kMatchThreads - 1) / kMatchThreads, B);
    iter_proj_kernel<<<grid, kMatchThreads, 0, stream>>>(plane_a, plane_b, plane_c, target_rays.data_ptr<float>(),
                                                         p_init.data_ptr<float>(), p.data_ptr<float>(), conv.data_ptr<bool>(), H, W,
                                                         N, static_cast<int>(max_iter), static_cast<float>(lambda_init),
                                                         static_cast<float>(cost_thresh));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {p, conv};
}

namespace {

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

template <int kVec>
void launch_refine_half(const dim3& grid, cudaStream_t stream, const at::Tensor& planes, const at::Tensor& D21, const at::Tensor& p1,
                        at::Tensor& out, int H, int W, int N, int radius, int dilation_max) {
  refine_half_kernel<kVec, uint4, 0><<<grid, kMatchThreads, 0, stream>>>(reinterpret_cast<const uint4*>(planes.data_ptr()),
                                                               reinterpret_cast<const uint4*>(D21.data_ptr()), p1.data_ptr<int64_t>(),
                                                               out.data_ptr<int64_t>(), H, W, N, radius, dilation_max);
}

}  // namespace

at::Tensor refine_matches_cuda(const at::Tensor& D11, const at::Tensor& D21, const at::Tensor& p1, int64_t radius, int64_t dilation_max) {
  TORCH_CHECK(D11.scalar_type() == at::kHalf || D11.scalar_type() == at::kFloat, "refine_matches: D11 must be float16 or float32");
  M3R_CHECK_INPUT(D11, D11.scalar_type());
  M3R_CHECK_INPUT(D21, D11.scalar_type());
  M3R_CHECK_INPUT(p1, at::kLong);
  const c10::cuda::CUDAGuard guard(D11.device());
  const int B = D11.size(0), H = D11.size(1), W = D11.size(2), F = D11.size(3);
  const int N = p1.size(1);
  auto out = at::empty({B, N, 2}, p1.options());
  if (B == 0 || N == 0) return out;
  const dim3 grid((N + kMatchThreads - 1) / kMatchThreads, B);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int kVec = F / 8;
  const int64_t HW = static_cast<int64_t>(H) * W;
  const bool fast = D11.scalar_type() == at::kHalf && F % 8 == 0 && kVec >= 1 && kVec <= 4 &&
                    static_cast<int64_t>(B) * HW * kVec < INT32_MAX;
  if (fast) {
    at::Tensor planes;  // [B, kVec, HW, 8]
    if (aligned16(D11.data_ptr())) {
      planes = at::empty({B, kVec, HW, 8}, D11.options());
      const int total = static_cast<int>(B * HW * kVec);
      pack_desc_kernel<<<(total + 255) / 256, 256, 0, stream>>>(reinterpret_cast<const uint4*>(D11.data_ptr()),
                                                                reinterpret_cast<uint4*>(planes.data_ptr()), static_cast<int>(HW),
                                                                kVec, total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {  // a view with an odd offset: let ATen copy it into a fresh (aligned) allocation
      planes = at::empty({B, kVec, HW, 8}, D11.options());
      planes.copy_(D11.reshape({B, HW, kVec, 8}).permute({0, 2, 1, 3}));  // (contiguous() would not copy for kVec = 1)
    }
    const at::Tensor q = aligned16(D21.data_ptr()) ? D21 : D21.clone();
    const int r = static_cast<int>(radius), dm = static_cast<int>(dilation_max);
    switch (kVec) {
      case 1: launch_refine_half<1>(grid, stream, planes, q, p1, out, H, W, N, r, dm); break;
      case 2: launch_refine_half<2>(grid, stream, planes, q, p1, out, H, W, N, r, dm); break;
      case 3: launch_refine_half<3>(grid, stream, planes, q, p1, out, H, W, N, r, dm); break;
      default: launch_refine_half<4>(grid, stream, planes, q, p1, out, H, W, N, r, dm); break;
    }
  } else if (D11.scalar_type() == at::kHalf) {
    refine_matches_kernel<__half><<<grid, kMatchThreads, 0, stream>>>(
        reinterpret_cast<const __half*>(D11.data_ptr<at::Half>()), reinterpret_cast<const __half*>(D21.data_ptr<at::Half>()),
        p1.data_ptr<int64_t>(), out.data_ptr<int64_t>(), H, W, F, N, static_cast<int>(radius), static_cast<int>(dilation_max));
  } else {
    refine_matches_kernel<float><<<grid, kMatchThreads, 0, stream>>>(D11.data_ptr<float>(), D21.data_ptr<float>(),
                                                                     p1.data_ptr<int64_t>(), out.data_ptr<int64_t>(), H, W, F, N,
                                                                     static_cast<int>(radius), static_cast<int>(dilation_max));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// ------------------------------------------------------------------------------------------------
// fused host entry points of matching.match / matching.prepare_rays (the Python side falls back to
// the separate ops when a prebuilt module lacks them)
// ------------------------------------------------------------------------------------------------
namespace {

void check_points(const at::Tensor& X11, const at::Tensor& X21, const char* op) {
  M3R_CHECK_INPUT(X11, at::kFloat);
  M3R_CHECK_INPUT(X21, at::kFloat);
  TORCH_CHECK(X11.dim() == 4 && X11.size(3) == 3 && X11.size(1) >= 3 && X11.size(2) >= 3, op, ": X11 must be [B, H, W, 3], H, W >= 3");
  TORCH_CHECK(X21.sizes() == X11.sizes(), op, ": X21 must have the shape of X11");
  TORCH_CHECK(9 * X11.size(0) * X11.size(1) * X11.size(2) < INT32_MAX, op, ": the images are too large (B * H * W * 9 must be < 2^31)");
}

}  // namespace

std::vector<at::Tensor> prepare_rays_cuda(const at::Tensor& X11, const at::Tensor& X21, int64_t norm_mode) {
  check_points(X11, X21, "prepare_rays");
  const c10::cuda::CUDAGuard guard(X11.device());
  const int B = X11.size(0), H = X11.size(1), W = X11.size(2);
  auto rays = at::empty({B, H, W, 9}, X11.options());
  auto target = at::empty({B, H * W, 3}, X11.options());
  if (B > 0) {
    auto stream = c10::cuda::getCurrentCUDAStream();
    const dim3 grid((W + kMatchThreads - 1) / kMatchThreads, H, B);
    prep_rays_kernel<false><<<grid, kMatchThreads, 0, stream>>>(X11.data_ptr<float>(), X21.data_ptr<float>(), nullptr, nullptr, nullptr,
                                                                rays.data_ptr<float>(), target.data_ptr<float>(), H, W,
                                                                static_cast<int>(norm_mode));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {rays, target};
}

std::vector<at::Tensor> match_project_cuda(const at::Tensor& X11, const at::Tensor& X21, const c10::optional<at::Tensor>& idx_init,
                                           int64_t max_iter, double lambda_init, double cost_thresh, double dist_thresh,
                                           int64_t norm_mode) {
  check_points(X11, X21, "match_project");
  const c10::cuda::CUDAGuard guard(X11.device());
  const int B = X11.size(0), H = X11.size(1), W = X11.size(2);
  const int N = H * W;
  const int64_t* init = nullptr;
  if (idx_init.has_value() && idx_init->defined()) {
    M3R_CHECK_INPUT((*idx_init), at::kLong);
    TORCH_CHECK(idx_init->dim() == 2 && idx_init->size(0) == B && idx_init->size(1) == N, "match_project: idx_init must be [B, HW]");
    init = idx_init->data_ptr<int64_t>();
  }
  auto p1 = at::empty({B, N, 2}, X11.options().dtype(at::kLong));
  auto lin = at::empty({B, N}, X11.options().dtype(at::kLong));
  auto conv = at::empty({B, N}, X11.options().dtype(at::kBool));
  auto valid = at::empty({B, N}, X11.options().dtype(at::kBool));
  if (B > 0) {
    const int64_t total = static_cast<int64_t>(B) * N;
    auto stream = c10::cuda::getCurrentCUDAStream();
    auto packed = at::empty({9 * total}, X11.options());
    float* base = packed.data_ptr<float>();  // 256-byte aligned: planes at 0, 4 total, 8 total floats
    float4* plane_a = reinterpret_cast<float4*>(base);
    float4* plane_b = reinterpret_cast<float4*>(base + 4 * total);
    float* plane_c = base + 8 * total;
    const dim3 grid_prep((W + kMatchThreads - 1) / kMatchThreads, H, B);
    prep_rays_kernel<true><<<grid_prep, kMatchThreads, 0, stream>>>(X11.data_ptr<float>(), nullptr, plane_a, plane_b, plane_c, nullptr,
                                                                    nullptr, H, W, static_cast<int>(norm_mode));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const dim3 grid((N + kMatchThreads - 1) / kMatchThreads, B);
    match_project_kernel<<<grid, kMatchThreads, 0, stream>>>(
        plane_a, plane_b, plane_c, X11.data_ptr<float>(), X21.data_ptr<float>(), init, p1.data_ptr<int64_t>(), lin.data_ptr<int64_t>(),
        conv.data_ptr<bool>(), valid.data_ptr<bool>(), H, W, static_cast<int>(max_iter), static_cast<float>(lambda_init),
        static_cast<float>(cost_thresh), static_cast<float>(dist_thresh), static_cast<int>(norm_mode));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {p1, lin, conv, valid};
}

namespace {

template <int kVec, typename TQ>
void launch_refine_lin(bool tiled, int B, cudaStream_t stream, const at::Tensor& planes, const TQ* D21, const at::Tensor& p1,
                       at::Tensor& out, int H, int W, int N, int radius, int dilation_max) {
  const uint4* D11p = reinterpret_cast<const uint4*>(planes.data_ptr());
  if (tiled) {
    const dim3 grid(((W + kTileW - 1) / kTileW) * ((H + kTileH - 1) / kTileH), B);
    refine_half_kernel<kVec, TQ, 2><<<grid, kMatchThreads, 0, stream>>>(D11p, D21, p1.data_ptr<int64_t>(), out.data_ptr<int64_t>(), H,
                                                                        W, N, radius, dilation_max);
  } else {
    const dim3 grid((N + kMatchThreads - 1) / kMatchThreads, B);
    refine_half_kernel<kVec, TQ, 1><<<grid, kMatchThreads, 0, stream>>>(D11p, D21, p1.data_ptr<int64_t>(), out.data_ptr<int64_t>(), H,
                                                                        W, N, radius, dilation_max);
  }
}

template <typename TQ>
void dispatch_refine_lin(int kVec, bool tiled, int B, cudaStream_t stream, const at::Tensor& planes, const TQ* D21, const at::Tensor& p1,
                         at::Tensor& out, int H, int W, int N, int radius, int dilation_max) {
  switch (kVec) {
    case 1: launch_refine_lin<1, TQ>(tiled, B, stream, planes, D21, p1, out, H, W, N, radius, dilation_max); break;
    case 2: launch_refine_lin<2, TQ>(tiled, B, stream, planes, D21, p1, out, H, W, N, radius, dilation_max); break;
    case 3: launch_refine_lin<3, TQ>(tiled, B, stream, planes, D21, p1, out, H, W, N, radius, dilation_max); break;
    default: launch_refine_lin<4, TQ>(tiled, B, stream, planes, D21, p1, out, H, W, N, radius, dilation_max); break;
  }
}

// MAST3R_SLAM_REFINE_VARIANT (refine_tile_kernel): read at every call (well under a microsecond),
// so that a benchmark can switch between calls in one process.
// 3: fastest on the H100 (docs/BENCHMARKS.md); where a device lacks its 147 KB of shared memory
// per block, variant 2 and then 1 (global loads only) run instead.
constexpr int kDefaultRefineVariant = 3;
constexpr int kRefineVariants = 4;  // 0 .. 3

int refine_variant() {
  const char* s = std::getenv("MAST3R_SLAM_REFINE_VARIANT");
  if (s == nullptr || *s == '\0') return kDefaultRefineVariant;
  char* end = nullptr;
  const long v = std::strtol(s, &end, 10);
  // a developer's switch (benchmarks, tests): anything else than 0..3 means the default
  if (*end != '\0' || v < 0 || v >= kRefineVariants) return kDefaultRefineVariant;
  return static_cast<int>(v);
}

// One refine_tile_kernel configuration (radius 3); false if the device cannot give it the shared
// memory it needs (the caller then uses refine_half_kernel).
template <int kVec, typename TQ, int kTW, int kTH, int kWW, int kWH>
bool launch_refine_tile(int B, cudaStream_t stream, const uint4* D11p, const TQ* D21, const int64_t* p1, int64_t* out, int H, int W,
                        int dilation_max) {
  auto kernel = refine_tile_kernel<kVec, TQ, 3, kTW, kTH, kWW, kWH>;
  constexpr size_t smem = static_cast<size_t>(kVec) * kWW * kWH * sizeof(uint4);
  if constexpr (smem > 48 * 1024) {
    static std::atomic<unsigned long long> ready{0};  // devices on which the attribute is set
    int dev = 0;
    C10_CUDA_CHECK(cudaGetDevice(&dev));
    const unsigned long long bit = dev < 64 ? (1ull << dev) : 0ull;
    if (bit == 0 || (ready.load() & bit) == 0) {
      int optin = 0;
      C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
      if (smem > static_cast<size_t>(optin)) return false;
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
      // a hint: the largest shared-memory carve-out, so that two 110 KB blocks fit on an SM
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
      ready.fetch_or(bit);
    }
  }
  const dim3 grid(((W + kTW - 1) / kTW) * ((H + kTH - 1) / kTH), B);
  kernel<<<grid, kTW * kTH, smem, stream>>>(D11p, D21, p1, out, H, W, dilation_max);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

// Variant 1..3 for F = 24 (kVec 3), radius 3, N = HW; false: not launched.
template <typename TQ>
bool refine_lin_variant(int variant, int B, cudaStream_t stream, const at::Tensor& planes, const TQ* D21, const at::Tensor& p1,
                        at::Tensor& out, int H, int W, int dilation_max) {
  const uint4* D11p = reinterpret_cast<const uint4*>(planes.data_ptr());
  const int64_t* pp = p1.data_ptr<int64_t>();
  int64_t* o = out.data_ptr<int64_t>();
  switch (variant) {
    case 1: return launch_refine_tile<3, TQ, 16, 8, 0, 0>(B, stream, D11p, D21, pp, o, H, W, dilation_max);
    case 2: return launch_refine_tile<3, TQ, 16, 16, 48, 48>(B, stream, D11p, D21, pp, o, H, W, dilation_max) ||
                   launch_refine_tile<3, TQ, 16, 8, 0, 0>(B, stream, D11p, D21, pp, o, H, W, dilation_max);
    case 3: return launch_refine_tile<3, TQ, 32, 16, 64, 48>(B, stream, D11p, D21, pp, o, H, W, dilation_max) ||
                   launch_refine_tile<3, TQ, 16, 16, 48, 48>(B, stream, D11p, D21, pp, o, H, W, dilation_max) ||
                   launch_refine_tile<3, TQ, 16, 8, 0, 0>(B, stream, D11p, D21, pp, o, H, W, dilation_max);
    default: return false;
  }
}

}  // namespace

// float16 refinement of float32 or float16 descriptors (cast to float16 on the fly, as
// match's D.to(torch.float16)), F in {8, 16, 24, 32}; returns linear indices u + W v [B, N].
// tiled (needs N = HW): 2D blocks of queries (refine_half_kernel, kOut = 2).
at::Tensor refine_matches_lin_cuda(const at::Tensor& D11, const at::Tensor& D21, const at::Tensor& p1, int64_t radius,
                                   int64_t dilation_max, bool tiled) {
  TORCH_CHECK(D11.scalar_type() == at::kHalf || D11.scalar_type() == at::kFloat, "refine_matches_lin: D11 must be float16 or float32");
  M3R_CHECK_INPUT(D11, D11.scalar_type());
  M3R_CHECK_INPUT(D21, D11.scalar_type());
  M3R_CHECK_INPUT(p1, at::kLong);
  TORCH_CHECK(D11.dim() == 4 && D21.dim() == 3 && p1.dim() == 3, "refine_matches_lin: D11 [B, H, W, F], D21 [B, N, F], p1 [B, N, 2]");
  const c10::cuda::CUDAGuard guard(D11.device());
  const int B = D11.size(0), H = D11.size(1), W = D11.size(2), F = D11.size(3);
  const int N = p1.size(1);
  const int kVec = F / 8;
  const int64_t HW = static_cast<int64_t>(H) * W;
  TORCH_CHECK(F % 8 == 0 && kVec >= 1 && kVec <= 4, "refine_matches_lin: F must be 8, 16, 24 or 32");
  TORCH_CHECK(D21.size(0) == B && D21.size(1) == N && D21.size(2) == F && p1.size(0) == B && p1.size(2) == 2,
              "refine_matches_lin: inconsistent shapes");
  TORCH_CHECK(static_cast<int64_t>(B) * HW * kVec < INT32_MAX, "refine_matches_lin: the descriptor image is too large");
  TORCH_CHECK(!tiled || N == HW, "refine_matches_lin: tiled needs one query per pixel (N = H W)");
  auto out = at::empty({B, N}, p1.options());
  if (B == 0 || N == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  auto planes = at::empty({B, kVec, HW, 8}, D11.options().dtype(at::kHalf));
  const int total = static_cast<int>(B * HW * kVec);
  const int r = static_cast<int>(radius), dm = static_cast<int>(dilation_max);
  uint4* dst = reinterpret_cast<uint4*>(planes.data_ptr());
  // refine_tile_kernel variants: match's case only (tiled, F = 24, radius 3)
  const int variant = tiled ? refine_variant() : 0;
  const bool use_variant = variant != 0 && kVec == 3 && r == 3;
  if (D11.scalar_type() == at::kFloat) {
    pack_desc_cast_kernel<float><<<(total + 255) / 256, 256, 0, stream>>>(D11.data_ptr<float>(), dst, static_cast<int>(HW), kVec, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (!(use_variant && refine_lin_variant<float>(variant, B, stream, planes, D21.data_ptr<float>(), p1, out, H, W, dm)))
      dispatch_refine_lin<float>(kVec, tiled, B, stream, planes, D21.data_ptr<float>(), p1, out, H, W, N, r, dm);
  } else {
    pack_desc_cast_kernel<__half><<<(total + 255) / 256, 256, 0, stream>>>(reinterpret_cast<const __half*>(D11.data_ptr<at::Half>()), dst,
                                                                          static_cast<int>(HW), kVec, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const __half* q = reinterpret_cast<const __half*>(D21.data_ptr<at::Half>());
    if (!(use_variant && refine_lin_variant<__half>(variant, B, stream, planes, q, p1, out, H, W, dm)))
      dispatch_refine_lin<__half>(kVec, tiled, B, stream, planes, q, p1, out, H, W, N, r, dm);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace mast3r_slam
