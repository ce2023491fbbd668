// Matching kernels: iterative projective matching (iter_proj) and descriptor refinement
// (refine_matches). One thread per query, bounds-checked (any number of queries). Both repack their
// image input into planes first (one small kernel) so that the per-query reads are 16-byte vectors
// of neighbouring pixels; results are bit-identical to the direct kernels (docs/KERNELS.md).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_fp16.h>

#include <cstdint>
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

// Per query: max_iter LM steps. The original interpolates the 9 channels at the current position
// and the 3 ray channels at the proposal in every iteration; here the 9 channels are interpolated
// at the proposal only and kept when it is accepted (the same numbers: the next iteration of the
// original re-interpolates exactly there), 9 instead of 12 channels per iteration.
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
  const float4* pa = plane_a + img;
  const float4* pb = plane_b + img;
  const float* pc = plane_c + img;
  const int64_t q = static_cast<int64_t>(b) * N + n;
  const float target[3] = {target_rays[3 * q], target_rays[3 * q + 1], target_rays[3 * q + 2]};
  float u = clampf(p_init[2 * q], 1.0f, W - 2.0f);
  float v = clampf(p_init[2 * q + 1], 1.0f, H - 2.0f);
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
  p_out[2 * q] = u;
  p_out[2 * q + 1] = v;
  converged[q] = conv;
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
__global__ void pack_desc_kernel(const uint4* __restrict__ src,  // [B, HW, kVec]
                                 uint4* __restrict__ dst,  // [B, kVec, HW]
                                 int HW, int kVec, int total) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int k = i % kVec;
  const int bp = i / kVec;
  const int b = bp / HW;
  const int p = bp - b * HW;
  dst[(b * kVec + k) * HW + p] = src[i];
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

template <int kVec>
__global__ void refine_half_kernel(const uint4* __restrict__ D11p,  // [B, kVec, HW] (8 halves each)
                                   const uint4* __restrict__ D21,  // [B, N, kVec]
                                   const int64_t* __restrict__ p1,  // [B, N, 2]
                                   int64_t* __restrict__ p1_new,  // [B, N, 2]
                                   int H, int W, int N, int radius, int dilation_max) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  const int b = blockIdx.y;
  if (n >= N) return;
  const int HW = H * W;
  const uint4* img = D11p + static_cast<int64_t>(b) * kVec * HW;
  const int64_t q = static_cast<int64_t>(b) * N + n;
  __half2 qd[4 * kVec];
#pragma unroll
  for (int k = 0; k < kVec; k++) {
    const uint4 x = D21[q * kVec + k];
    qd[4 * k] = as_half2(x.x);
    qd[4 * k + 1] = as_half2(x.y);
    qd[4 * k + 2] = as_half2(x.z);
    qd[4 * k + 3] = as_half2(x.w);
  }
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
  p1_new[2 * q] = u_best;
  p1_new[2 * q + 1] = v_best;
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
  refine_half_kernel<kVec><<<grid, kMatchThreads, 0, stream>>>(reinterpret_cast<const uint4*>(planes.data_ptr()),
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

}  // namespace mast3r_slam
