// Global (keyframe graph) Gauss-Newton on the GPU: rays, calib and points residuals.
//
// Per iteration, all on the current stream and without a host synchronisation:
//  1. gn_edge_kernel<V>: grid (blocks per edge, E) of 256 threads; each thread accumulates, over a
//     strided set of pixels, the 28 + 7 entries of the edge's *local* normal equations
//     (sum w J_loc^T J_loc, sum w err J_loc, J_loc = d h / d xi_ij); warp-shuffle + shared-memory
//     reduction, one double atomicAdd per entry and block into acc[E, 36].
//  2. gn_assemble_kernel: one block per edge maps the local sums through Ad(T_i^-1)
//     (J_j = J_loc Ad, J_i = -J_j: blocks A at (i,i), (j,j), -A at (i,j), (j,i); -g at i, g at j)
//     into the dense 7(n-1) system (double, first pose fixed).
//  3. Dense Cholesky (ATen linalg_cholesky_ex / cholesky_solve, on the device).
//  4. gn_retract_kernel: dx = -H^-1 b (zero if the factorisation failed), left retraction of every
//     non-fixed pose, ||dx|| on the device; below delta_thresh the `active` flag drops and the
//     kernels of the remaining iterations return at once (the original breaks out of its loop).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <tuple>

#include "bindings.h"
#include "common.cuh"

namespace mast3r_slam {

namespace {

enum Variant { kRays = 0, kCalib = 1, kPoints = 2 };

constexpr int kPixelsPerThread = 8;

struct GNParams {
  float s0, s1;  // inverse sigmas: rays (ray, dist), calib (pixel, depth), points (point, unused)
  float C_thresh, Q_thresh, huber;
  CalibParams calib;  // fx, fy, cx, cy are read from K on the device
  const float* K;  // [3, 3] (calib only)
  const float* p;  // [E, HW, 2] sub-pixel matches (u, v) in ii[e], or nullptr (integer matches)
  int height, width;  // image size for the interpolation at p
};

// Bilinear sample of a row-major [H*W, 3] map at (pu, pv): the pixel is clamped to the image and
// the top-left corner to [0, W-2] x [0, H-2] (as the PyTorch path and matching.sample_pointmap).
__device__ __forceinline__ void bilinear3(const float* __restrict__ X, float pu, float pv, int H, int W, float* out) {
  const float u = fminf(fmaxf(pu, 0.0f), static_cast<float>(W - 1));
  const float v = fminf(fmaxf(pv, 0.0f), static_cast<float>(H - 1));
  const float u0 = fminf(floorf(u), static_cast<float>(W - 2));
  const float v0 = fminf(floorf(v), static_cast<float>(H - 2));
  const float du = u - u0, dv = v - v0;
  const int64_t i00 = static_cast<int64_t>(u0) + static_cast<int64_t>(W) * static_cast<int64_t>(v0);
  const float* x00 = X + 3 * i00;
  const float* x01 = x00 + 3;
  const float* x10 = x00 + 3 * static_cast<int64_t>(W);
  const float* x11 = x10 + 3;
#pragma unroll
  for (int c = 0; c < 3; c++)
    out[c] = (1.0f - dv) * ((1.0f - du) * x00[c] + du * x01[c]) + dv * ((1.0f - du) * x10[c] + du * x11[c]);
}

template <int V>
__global__ void gn_edge_kernel(const float* __restrict__ Twc, const float* __restrict__ Xs, const float* __restrict__ Cs,
                               const int64_t* __restrict__ ii, const int64_t* __restrict__ jj,
                               const int64_t* __restrict__ idx_ii2jj, const bool* __restrict__ valid_match,
                               const float* __restrict__ Q, int HW, GNParams p, const int* __restrict__ active,
                               double* __restrict__ acc) {
  __shared__ float shared[kAcc * (kThreads / 32)];
  if (*active == 0) return;
  const int e = blockIdx.y;
  const int64_t i = ii[e], j = jj[e];
  const Sim3f Tij = sim3_inv_mul(load_pose(Twc + 8 * i), load_pose(Twc + 8 * j));
  const float* Xi_base = Xs + i * HW * 3;
  const float* Xj_base = Xs + j * HW * 3;
  CalibParams cp = p.calib;
  if (V == kCalib) {
    cp.fx = p.K[0];
    cp.fy = p.K[4];
    cp.cx = p.K[2];
    cp.cy = p.K[5];
  }
  float a[kAcc];
#pragma unroll
  for (int l = 0; l < kAcc; l++) a[l] = 0.0f;

  for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < HW; k += gridDim.x * blockDim.x) {
    const int64_t ek = static_cast<int64_t>(e) * HW + k;
    const bool vm = valid_match[ek];
    const int64_t m = vm ? idx_ii2jj[ek] : 0;
    const float q = Q[ek];
    if (!(vm && q > p.Q_thresh && Cs[i * HW + m] > p.C_thresh && Cs[j * HW + k] > p.C_thresh)) continue;
    float Xi[3];
    float u_t = 0.0f, v_t = 0.0f;  // measured pixel (calib)
    if (p.p != nullptr) {  // sub-pixel match: interpolated measurement (validity from the integer match)
      u_t = p.p[2 * ek];
      v_t = p.p[2 * ek + 1];
      bilinear3(Xi_base, u_t, v_t, p.height, p.width, Xi);
    } else {
#pragma unroll
      for (int c = 0; c < 3; c++) Xi[c] = Xi_base[3 * m + c];
      if (V == kCalib) {
        u_t = static_cast<float>(m % cp.width);
        v_t = static_cast<float>(m / cp.width);
      }
    }
    const float Xj[3] = {Xj_base[3 * k], Xj_base[3 * k + 1], Xj_base[3 * k + 2]};
    float P[3];
    sim3_act(Tij, Xj, P);
    const float sq = sqrtf(q);
    Rows4 rows;
    if (V == kRays) {
      rays_rows(P, Xi, sq * p.s0, sq * p.s1, rows);
      accumulate_rows<4>(rows, p.huber, a);
    } else if (V == kCalib) {
      const bool meas_ok = Xi[2] > cp.z_eps;
      if (calib_rows(P, u_t, v_t, meas_ok ? logf(Xi[2]) : 0.0f, meas_ok, cp, sq * p.s0, sq * p.s1, rows))
        accumulate_rows<3>(rows, p.huber, a);
    } else {
      point_rows(P, Xi, sq * p.s0, rows);
      accumulate_rows<3>(rows, p.huber, a);
    }
  }
  block_reduce_add(a, shared, acc + static_cast<int64_t>(e) * kAcc);
}

__global__ void gn_assemble_kernel(const float* __restrict__ Twc, const int64_t* __restrict__ ii,
                                   const int64_t* __restrict__ jj, const double* __restrict__ acc,
                                   const int* __restrict__ active, double* __restrict__ Hd, double* __restrict__ bd, int N7) {
  __shared__ double Ad[49], Al[49], tmp[49], A[49], g[7];
  if (*active == 0) return;
  const int e = blockIdx.x;
  const int t = threadIdx.x;
  const int64_t i = ii[e], j = jj[e];
  const double* ae = acc + static_cast<int64_t>(e) * kAcc;
  if (t == 0) {
    sim3_adjoint_inv(load_pose(Twc + 8 * i), Ad);
    unpack_sym7(ae, Al);
  }
  __syncthreads();
  const int r = t / 7, c = t % 7;
  if (t < 49) {
    double s = 0.0;
    for (int k = 0; k < 7; k++) s += Al[r * 7 + k] * Ad[k * 7 + c];
    tmp[t] = s;
  }
  if (t < 7) {
    double s = 0.0;
    for (int k = 0; k < 7; k++) s += Ad[k * 7 + t] * ae[28 + k];
    g[t] = s;
  }
  __syncthreads();
  if (t < 49) {
    double s = 0.0;
    for (int k = 0; k < 7; k++) s += Ad[k * 7 + r] * tmp[k * 7 + c];
    A[t] = s;
  }
  __syncthreads();
  const int64_t pi = i - 1, pj = j - 1;  // position 0 (lowest keyframe id) is fixed
  if (t < 49) {
    const double v = A[t];
    if (pi >= 0) atomicAdd(Hd + (7 * pi + r) * N7 + 7 * pi + c, v);
    if (pj >= 0) atomicAdd(Hd + (7 * pj + r) * N7 + 7 * pj + c, v);
    if (pi >= 0 && pj >= 0) {
      atomicAdd(Hd + (7 * pi + r) * N7 + 7 * pj + c, -v);
      atomicAdd(Hd + (7 * pj + r) * N7 + 7 * pi + c, -v);
    }
  }
  if (t < 7) {
    if (pi >= 0) atomicAdd(bd + 7 * pi + t, -g[t]);
    if (pj >= 0) atomicAdd(bd + 7 * pj + t, g[t]);
  }
}

__global__ void gn_retract_kernel(float* __restrict__ Twc, const double* __restrict__ x, const int* __restrict__ info,
                                  int* __restrict__ active, float* __restrict__ dx_last, int n, float delta_thresh) {
  __shared__ int s_ok;
  __shared__ double s_norm[kThreads];
  if (*active == 0) return;
  const int t = threadIdx.x;
  const int N7 = 7 * (n - 1);
  if (t == 0) s_ok = (*info == 0);
  __syncthreads();
  for (int l = t; l < N7; l += blockDim.x)
    if (!isfinite(x[l])) s_ok = 0;
  __syncthreads();
  const bool ok = s_ok != 0;
  double sq = 0.0;
  for (int k = t; k < n - 1; k += blockDim.x) {
    double xi[7];
    for (int c = 0; c < 7; c++) {
      const float d = ok ? static_cast<float>(-x[7 * k + c]) : 0.0f;  // dx = -H^-1 b, float32 as the original
      dx_last[7 * k + c] = d;
      xi[c] = d;
      sq += xi[c] * xi[c];
    }
    float* pose = Twc + 8 * (k + 1);
    store_pose(sim3_retr(xi, load_pose(pose)), pose);
  }
  s_norm[t] = sq;
  __syncthreads();
  for (int off = blockDim.x / 2; off > 0; off >>= 1) {
    if (t < off) s_norm[t] += s_norm[t + off];
    __syncthreads();
  }
  if (t == 0 && !(sqrt(s_norm[0]) >= delta_thresh)) *active = 0;
}

// Positions of global keyframe ids in sorted unique(ii, jj) without a host sync (sort, mark first
// occurrences, cumulative sum).
std::tuple<at::Tensor, at::Tensor> keyframe_positions(const at::Tensor& ii, const at::Tensor& jj) {
  const int64_t E = ii.size(0);
  auto all = at::cat({ii, jj});
  auto sorted = at::sort(all);
  auto s = std::get<0>(sorted);
  auto perm = std::get<1>(sorted);
  auto first = at::ones_like(s);
  if (s.size(0) > 1) first.slice(0, 1).copy_(s.slice(0, 1).ne(s.slice(0, 0, -1)).to(at::kLong));
  auto rank_sorted = at::cumsum(first, 0) - 1;
  auto rank = at::empty_like(rank_sorted).scatter_(0, perm, rank_sorted);
  return {rank.slice(0, 0, E).contiguous(), rank.slice(0, E).contiguous()};
}

at::Tensor gauss_newton(int variant, at::Tensor Twc, const at::Tensor& Xs, const at::Tensor& Cs, const at::Tensor& ii,
                        const at::Tensor& jj, const at::Tensor& idx_ii2jj, const at::Tensor& valid_match, const at::Tensor& Q,
                        GNParams p, const c10::optional<at::Tensor>& p_ii2jj, int64_t width, int64_t max_iter,
                        double delta_thresh) {
  M3R_CHECK_INPUT(Twc, at::kFloat);
  M3R_CHECK_INPUT(Xs, at::kFloat);
  M3R_CHECK_INPUT(Cs, at::kFloat);
  M3R_CHECK_INPUT(ii, at::kLong);
  M3R_CHECK_INPUT(jj, at::kLong);
  M3R_CHECK_INPUT(idx_ii2jj, at::kLong);
  M3R_CHECK_INPUT(valid_match, at::kBool);
  M3R_CHECK_INPUT(Q, at::kFloat);
  const c10::cuda::CUDAGuard guard(Twc.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int n = Twc.size(0);
  const int HW = Xs.size(1);
  const int E = ii.size(0);
  p.p = nullptr;
  if (p_ii2jj.has_value() && p_ii2jj->defined()) {
    const at::Tensor& pt = *p_ii2jj;
    M3R_CHECK_INPUT(pt, at::kFloat);
    TORCH_CHECK(pt.dim() == 3 && pt.size(0) == E && pt.size(1) == HW && pt.size(2) == 2, "p_ii2jj must be [E, HW, 2]");
    TORCH_CHECK(width >= 2 && HW % width == 0 && HW / width >= 2, "width must divide HW (both sides >= 2) with p_ii2jj");
    p.p = pt.data_ptr<float>();
    p.width = static_cast<int>(width);
    p.height = static_cast<int>(HW / width);
  }
  auto fopts = Twc.options();
  auto dx_last = at::zeros({std::max(n - 1, 0), 7}, fopts);
  if (n < 2 || E == 0 || max_iter <= 0) return dx_last;
  const int N7 = 7 * (n - 1);
  auto dopts = fopts.dtype(at::kDouble);
  auto pos = keyframe_positions(ii, jj);
  const auto& ii_pos = std::get<0>(pos);
  const auto& jj_pos = std::get<1>(pos);
  auto acc = at::empty({E, kAcc}, dopts);
  auto Hd = at::empty({N7, N7}, dopts);
  auto bd = at::empty({N7, 1}, dopts);
  auto active = at::ones({1}, fopts.dtype(at::kInt));
  const int bpe = std::max(1, std::min(65535, (HW + kThreads * kPixelsPerThread - 1) / (kThreads * kPixelsPerThread)));
  const dim3 edge_grid(bpe, E);

  for (int64_t it = 0; it < max_iter; it++) {
    acc.zero_();
    Hd.zero_();
    bd.zero_();
    const float* T = Twc.data_ptr<float>();
    if (variant == kRays) {
      gn_edge_kernel<kRays><<<edge_grid, kThreads, 0, stream>>>(
          T, Xs.data_ptr<float>(), Cs.data_ptr<float>(), ii_pos.data_ptr<int64_t>(), jj_pos.data_ptr<int64_t>(),
          idx_ii2jj.data_ptr<int64_t>(), valid_match.data_ptr<bool>(), Q.data_ptr<float>(), HW, p, active.data_ptr<int>(),
          acc.data_ptr<double>());
    } else if (variant == kCalib) {
      gn_edge_kernel<kCalib><<<edge_grid, kThreads, 0, stream>>>(
          T, Xs.data_ptr<float>(), Cs.data_ptr<float>(), ii_pos.data_ptr<int64_t>(), jj_pos.data_ptr<int64_t>(),
          idx_ii2jj.data_ptr<int64_t>(), valid_match.data_ptr<bool>(), Q.data_ptr<float>(), HW, p, active.data_ptr<int>(),
          acc.data_ptr<double>());
    } else {
      gn_edge_kernel<kPoints><<<edge_grid, kThreads, 0, stream>>>(
          T, Xs.data_ptr<float>(), Cs.data_ptr<float>(), ii_pos.data_ptr<int64_t>(), jj_pos.data_ptr<int64_t>(),
          idx_ii2jj.data_ptr<int64_t>(), valid_match.data_ptr<bool>(), Q.data_ptr<float>(), HW, p, active.data_ptr<int>(),
          acc.data_ptr<double>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    gn_assemble_kernel<<<E, 64, 0, stream>>>(T, ii_pos.data_ptr<int64_t>(), jj_pos.data_ptr<int64_t>(), acc.data_ptr<double>(),
                                             active.data_ptr<int>(), Hd.data_ptr<double>(), bd.data_ptr<double>(), N7);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    auto chol = at::linalg_cholesky_ex(Hd, /*upper=*/false, /*check_errors=*/false);
    auto x = at::cholesky_solve(bd, std::get<0>(chol), /*upper=*/false).contiguous();
    auto info = std::get<1>(chol).to(at::kInt).contiguous();
    gn_retract_kernel<<<1, kThreads, 0, stream>>>(Twc.data_ptr<float>(), x.data_ptr<double>(), info.data_ptr<int>(),
                                                  active.data_ptr<int>(), dx_last.data_ptr<float>(), n,
                                                  static_cast<float>(delta_thresh));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return dx_last;
}

}  // namespace

at::Tensor gauss_newton_rays_cuda(at::Tensor Twc, const at::Tensor& Xs, const at::Tensor& Cs, const at::Tensor& ii,
                                  const at::Tensor& jj, const at::Tensor& idx_ii2jj, const at::Tensor& valid_match,
                                  const at::Tensor& Q, double sigma_ray, double sigma_dist, double C_thresh, double Q_thresh,
                                  int64_t max_iter, double delta_thresh, double huber, const c10::optional<at::Tensor>& p_ii2jj,
                                  c10::optional<int64_t> width) {
  GNParams p{};
  p.s0 = static_cast<float>(1.0 / sigma_ray);
  p.s1 = static_cast<float>(1.0 / sigma_dist);
  p.C_thresh = static_cast<float>(C_thresh);
  p.Q_thresh = static_cast<float>(Q_thresh);
  p.huber = static_cast<float>(huber);
  return gauss_newton(kRays, Twc, Xs, Cs, ii, jj, idx_ii2jj, valid_match, Q, p, p_ii2jj, width.value_or(0), max_iter,
                      delta_thresh);
}

at::Tensor gauss_newton_calib_cuda(at::Tensor Twc, const at::Tensor& Xs, const at::Tensor& Cs, const at::Tensor& K,
                                   const at::Tensor& ii, const at::Tensor& jj, const at::Tensor& idx_ii2jj,
                                   const at::Tensor& valid_match, const at::Tensor& Q, int64_t height, int64_t width,
                                   int64_t pixel_border, double z_eps, double sigma_pixel, double sigma_depth, double C_thresh,
                                   double Q_thresh, int64_t max_iter, double delta_thresh, double huber,
                                   const c10::optional<at::Tensor>& p_ii2jj) {
  M3R_CHECK_INPUT(K, at::kFloat);
  TORCH_CHECK(K.dim() == 2 && K.size(0) == 3 && K.size(1) == 3, "gauss_newton_calib: K must be [3, 3]");
  GNParams p{};
  p.K = K.data_ptr<float>();
  p.s0 = static_cast<float>(1.0 / sigma_pixel);
  p.s1 = static_cast<float>(1.0 / sigma_depth);
  p.C_thresh = static_cast<float>(C_thresh);
  p.Q_thresh = static_cast<float>(Q_thresh);
  p.huber = static_cast<float>(huber);
  p.calib = CalibParams{0.0f, 0.0f, 0.0f, 0.0f, static_cast<int>(height), static_cast<int>(width),
                        static_cast<float>(pixel_border), static_cast<float>(z_eps)};
  return gauss_newton(kCalib, Twc, Xs, Cs, ii, jj, idx_ii2jj, valid_match, Q, p, p_ii2jj, width, max_iter, delta_thresh);
}

at::Tensor gauss_newton_points_cuda(at::Tensor Twc, const at::Tensor& Xs, const at::Tensor& Cs, const at::Tensor& ii,
                                    const at::Tensor& jj, const at::Tensor& idx_ii2jj, const at::Tensor& valid_match,
                                    const at::Tensor& Q, double sigma_point, double C_thresh, double Q_thresh, int64_t max_iter,
                                    double delta_thresh, double huber, const c10::optional<at::Tensor>& p_ii2jj,
                                    c10::optional<int64_t> width) {
  GNParams p{};
  p.s0 = static_cast<float>(1.0 / sigma_point);
  p.s1 = 0.0f;
  p.C_thresh = static_cast<float>(C_thresh);
  p.Q_thresh = static_cast<float>(Q_thresh);
  p.huber = static_cast<float>(huber);
  return gauss_newton(kPoints, Twc, Xs, Cs, ii, jj, idx_ii2jj, valid_match, Q, p, p_ii2jj, width.value_or(0), max_iter,
                      delta_thresh);
}

}  // namespace mast3r_slam
