// Matching kernels: iterative projective matching (iter_proj) and descriptor refinement
// (refine_matches). One thread per query, bounds-checked (any number of queries).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_fp16.h>

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

// Interpolate channels [c0, c0 + n) of the 9-channel ray image.
template <int N>
__device__ __forceinline__ void sample(const float* img, const Bilinear& b, int W, int c0, float* out) {
  const float* r22 = img + 9 * b.i00 + c0;  // (u0, v0)
  const float* r21 = r22 + 9;  // (u0 + 1, v0)
  const float* r12 = r22 + 9 * W;  // (u0, v0 + 1)
  const float* r11 = r12 + 9;  // (u0 + 1, v0 + 1)
#pragma unroll
  for (int j = 0; j < N; j++) out[j] = b.w11 * r11[j] + b.w12 * r12[j] + b.w21 * r21[j] + b.w22 * r22[j];
}

__device__ __forceinline__ float ray_error(float* r, const float* target, float* err) {
  const float n = __fsqrt_rn(r[0] * r[0] + r[1] * r[1] + r[2] * r[2]);
  const float inv = static_cast<float>(1.0 / static_cast<double>(n));
#pragma unroll
  for (int j = 0; j < 3; j++) err[j] = r[j] * inv - target[j];
  return err[0] * err[0] + err[1] * err[1] + err[2] * err[2];
}

__global__ void iter_proj_kernel(const float* __restrict__ rays_with_grad,  // [B, H, W, 9]
                                 const float* __restrict__ target_rays,  // [B, N, 3]
                                 const float* __restrict__ p_init,  // [B, N, 2]
                                 float* __restrict__ p_out,  // [B, N, 2]
                                 bool* __restrict__ converged,  // [B, N]
                                 int H, int W, int N, int max_iter, float lambda_init, float cost_thresh) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  const int b = blockIdx.y;
  if (n >= N) return;
  const float* img = rays_with_grad + static_cast<int64_t>(b) * H * W * 9;
  const int64_t q = static_cast<int64_t>(b) * N + n;
  const float target[3] = {target_rays[3 * q], target_rays[3 * q + 1], target_rays[3 * q + 2]};
  float u = clampf(p_init[2 * q], 1.0f, W - 2.0f);
  float v = clampf(p_init[2 * q + 1], 1.0f, H - 2.0f);
  float lambda = lambda_init;
  bool conv = false;
  for (int it = 0; it < max_iter; it++) {
    float s[9], err[3];
    Bilinear bl = bilinear(u, v, W);
    sample<9>(img, bl, W, 0, s);
    const float cost = ray_error(s, target, err);
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
    float r[3], err_new[3];
    bl = bilinear(u_new, v_new, W);
    sample<3>(img, bl, W, 0, r);
    const float new_cost = ray_error(r, target, err_new);
    if (new_cost < cost) {
      u = u_new;
      v = v_new;
      lambda = static_cast<float>(static_cast<double>(lambda) * 0.1);
      conv = new_cost < cost_thresh;
    } else {
      lambda = static_cast<float>(static_cast<double>(lambda) * 10.0);
      conv = cost < cost_thresh;
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
  auto conv = at::zeros({B, N}, p_init.options().dtype(at::kBool));
  if (B > 0 && N > 0) {
    const dim3 grid((N + kMatchThreads - 1) / kMatchThreads, B);
    iter_proj_kernel<<<grid, kMatchThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        rays_with_grad.data_ptr<float>(), target_rays.data_ptr<float>(), p_init.data_ptr<float>(), p.data_ptr<float>(),
        conv.data_ptr<bool>(), H, W, N, static_cast<int>(max_iter), static_cast<float>(lambda_init),
        static_cast<float>(cost_thresh));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {p, conv};
}

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
  if (D11.scalar_type() == at::kHalf) {
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
