// Tracking solver on the GPU: frame -> keyframe Sim(3) IRLS (ray + distance or pixel + log depth).
//
// One launch of track_step_kernel<V> per Gauss-Newton iteration, no host synchronisation:
//  * every block accumulates, over a strided set of keyframe pixels, the 28 + 7 + 1 entries of the
//    Huber-weighted normal equations and cost (float per thread, warp shuffles, shared memory) and
//    adds them to a global double accumulator;
//  * the last block to finish (atomic ticket) solves the 7x7 system by Cholesky in double, applies
//    the left retraction, runs the original's convergence test (|old - new| / old < rel_error or
//    ||xi|| < delta_norm, the cost being taken before the step), updates the state and resets the
//    accumulator for the next launch;
//  * once converged or failed, the `active` flag is 0 and the remaining launches return at once.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <limits>

#include "bindings.h"
#include "common.cuh"

namespace mast3r_slam {

namespace {

enum TrackVariant { kTrackRays = 0, kTrackCalib = 1 };

// int state slots
constexpr int kActive = 0, kIters = 1, kConverged = 2, kFailed = 3, kTicket = 4, kNumState = 5;
// double state slots
constexpr int kOldCost = 0, kCost = 1;

struct TrackParams {
  float s0, s1;  // inverse sigmas: rays (ray, dist), calib (pixel, depth)
  float huber;
  double rel_error, delta_norm;
  CalibParams calib;  // fx, fy, cx, cy read from K on the device
  const float* K;
};

// Cholesky of a symmetric 7x7 matrix (row-major, double) and solve H x = g. False if not
// positive definite (as LAPACK's potrf: a pivot <= 0 or NaN).
__device__ bool cholesky_solve7(const double* H, const double* g, double* x) {
  double L[49];
  for (int j = 0; j < 7; j++) {
    double d = H[j * 7 + j];
    for (int k = 0; k < j; k++) d -= L[j * 7 + k] * L[j * 7 + k];
    if (!(d > 0.0)) return false;
    const double ljj = sqrt(d);
    L[j * 7 + j] = ljj;
    for (int i = j + 1; i < 7; i++) {
      double v = H[i * 7 + j];
      for (int k = 0; k < j; k++) v -= L[i * 7 + k] * L[j * 7 + k];
      L[i * 7 + j] = v / ljj;
    }
  }
  double y[7];
  for (int i = 0; i < 7; i++) {
    double v = g[i];
    for (int k = 0; k < i; k++) v -= L[i * 7 + k] * y[k];
    y[i] = v / L[i * 7 + i];
  }
  for (int i = 6; i >= 0; i--) {
    double v = y[i];
    for (int k = i + 1; k < 7; k++) v -= L[k * 7 + i] * x[k];
    x[i] = v / L[i * 7 + i];
  }
  return true;
}

template <int V>
__global__ void track_step_kernel(const float* __restrict__ X_f,  // [HW, 3]
                                  const float* __restrict__ Z,  // rays: X_k [HW, 3]; calib: meas_k [HW, 3]
                                  const bool* __restrict__ valid_meas,  // calib: [HW]
                                  const float* __restrict__ sqrt_w,  // [HW]
                                  int HW, TrackParams p, float* __restrict__ T, int* __restrict__ state,
                                  double* __restrict__ fstate, double* __restrict__ acc) {
  __shared__ float shared[kAcc * (kThreads / 32)];
  __shared__ bool s_last;
  if (state[kActive] == 0) return;
  const Sim3f Tc = load_pose(T);
  CalibParams cp = p.calib;
  if (V == kTrackCalib) {
    cp.fx = p.K[0];
    cp.fy = p.K[4];
    cp.cx = p.K[2];
    cp.cy = p.K[5];
  }
  float a[kAcc];
#pragma unroll
  for (int l = 0; l < kAcc; l++) a[l] = 0.0f;
  for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < HW; k += gridDim.x * blockDim.x) {
    const float w = sqrt_w[k];
    if (!(w > 0.0f)) continue;
    const float X[3] = {X_f[3 * k], X_f[3 * k + 1], X_f[3 * k + 2]};
    float P[3];
    sim3_act(Tc, X, P);
    Rows4 rows;
    if (V == kTrackRays) {
      rays_rows(P, Z + 3 * k, w * p.s0, w * p.s1, rows);
      accumulate_rows<4>(rows, p.huber, a);
    } else {
      if (calib_rows(P, Z[3 * k], Z[3 * k + 1], Z[3 * k + 2], valid_meas[k], cp, w * p.s0, w * p.s1, rows))
        accumulate_rows<3>(rows, p.huber, a);
    }
  }
  block_reduce_add(a, shared, acc);
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned int ticket = atomicAdd(reinterpret_cast<unsigned int*>(state + kTicket), 1u);
    s_last = (ticket == gridDim.x - 1);
  }
  __syncthreads();
  if (!s_last || threadIdx.x != 0) return;

  // last block: solve, retract, convergence test, reset the accumulator
  __threadfence();
  volatile double* vacc = acc;
  double sums[kAcc];
  for (int l = 0; l < kAcc; l++) sums[l] = vacc[l];
  double H[49], g[7], x[7];
  unpack_sym7(sums, H);
  for (int c = 0; c < 7; c++) g[c] = -sums[28 + c];  // g = -A^T b with r = -err, J = -dh/dxi
  const double cost = sums[35];
  bool ok = cholesky_solve7(H, g, x);
  double nrm2 = 0.0;
  for (int c = 0; c < 7; c++) {
    ok = ok && isfinite(x[c]);
    nrm2 += x[c] * x[c];
  }
  state[kIters] += 1;
  fstate[kCost] = cost;
  if (!ok) {
    state[kFailed] = 1;
    state[kActive] = 0;
  } else {
    double xi[7];
    for (int c = 0; c < 7; c++) xi[c] = static_cast<double>(static_cast<float>(x[c]));  // float32 step as the PyTorch path
    store_pose(sim3_retr(xi, Tc), T);
    const double old = fstate[kOldCost];
    const double rel = fabs(old - cost) / old;  // old = inf on the first iteration: nan, never below
    const bool conv = (rel < p.rel_error) || (sqrt(nrm2) < p.delta_norm);
    fstate[kOldCost] = cost;
    if (conv) {
      state[kConverged] = 1;
      state[kActive] = 0;
    }
  }
  for (int l = 0; l < kAcc; l++) acc[l] = 0.0;
  state[kTicket] = 0;
}

std::vector<at::Tensor> track_solve(int variant, const at::Tensor& T_CkCf, const at::Tensor& X_f, const at::Tensor& Z,
                                    const at::Tensor* valid_meas, const at::Tensor& sqrt_w, const TrackParams& p,
                                    int64_t max_iters) {
  M3R_CHECK_INPUT(T_CkCf, at::kFloat);
  M3R_CHECK_INPUT(X_f, at::kFloat);
  M3R_CHECK_INPUT(Z, at::kFloat);
  M3R_CHECK_INPUT(sqrt_w, at::kFloat);
  TORCH_CHECK(T_CkCf.numel() == 8, "track: T_CkCf must have 8 values");
  const c10::cuda::CUDAGuard guard(X_f.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int HW = X_f.size(0);
  auto T = T_CkCf.reshape({8}).clone();
  auto iopts = T.options().dtype(at::kInt);
  auto state = at::zeros({kNumState}, iopts);
  state.select(0, kActive).fill_(1);
  auto fstate = at::zeros({2}, T.options().dtype(at::kDouble));
  fstate.select(0, kOldCost).fill_(std::numeric_limits<double>::infinity());
  auto acc = at::zeros({kAcc}, T.options().dtype(at::kDouble));
  const int blocks = std::max(1, std::min(1024, (HW + kThreads * 4 - 1) / (kThreads * 4)));
  const bool* vm = valid_meas ? valid_meas->data_ptr<bool>() : nullptr;
  for (int64_t it = 0; it < max_iters; it++) {
    if (variant == kTrackRays) {
      track_step_kernel<kTrackRays><<<blocks, kThreads, 0, stream>>>(X_f.data_ptr<float>(), Z.data_ptr<float>(), vm,
                                                                     sqrt_w.data_ptr<float>(), HW, p, T.data_ptr<float>(),
                                                                     state.data_ptr<int>(), fstate.data_ptr<double>(),
                                                                     acc.data_ptr<double>());
    } else {
      track_step_kernel<kTrackCalib><<<blocks, kThreads, 0, stream>>>(X_f.data_ptr<float>(), Z.data_ptr<float>(), vm,
                                                                      sqrt_w.data_ptr<float>(), HW, p, T.data_ptr<float>(),
                                                                      state.data_ptr<int>(), fstate.data_ptr<double>(),
                                                                      acc.data_ptr<double>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {T, state.select(0, kIters).clone(), state.select(0, kConverged).to(at::kBool),
          state.select(0, kFailed).to(at::kBool), fstate.select(0, kCost).clone()};
}

}  // namespace

std::vector<at::Tensor> track_rays_cuda(const at::Tensor& T_CkCf, const at::Tensor& X_f, const at::Tensor& X_k,
                                        const at::Tensor& sqrt_w, double sigma_ray, double sigma_dist, double huber,
                                        int64_t max_iters, double rel_error, double delta_norm) {
  TrackParams p{};
  p.s0 = static_cast<float>(1.0 / sigma_ray);
  p.s1 = static_cast<float>(1.0 / sigma_dist);
  p.huber = static_cast<float>(huber);
  p.rel_error = rel_error;
  p.delta_norm = delta_norm;
  p.K = nullptr;
  return track_solve(kTrackRays, T_CkCf, X_f, X_k, nullptr, sqrt_w, p, max_iters);
}

std::vector<at::Tensor> track_calib_cuda(const at::Tensor& T_CkCf, const at::Tensor& X_f, const at::Tensor& meas_k,
                                         const at::Tensor& valid_meas_k, const at::Tensor& sqrt_w, const at::Tensor& K,
                                         int64_t height, int64_t width, double sigma_pixel, double sigma_depth,
                                         double pixel_border, double depth_eps, double huber, int64_t max_iters,
                                         double rel_error, double delta_norm) {
  M3R_CHECK_INPUT(valid_meas_k, at::kBool);
  M3R_CHECK_INPUT(K, at::kFloat);
  TrackParams p{};
  p.s0 = static_cast<float>(1.0 / sigma_pixel);
  p.s1 = static_cast<float>(1.0 / sigma_depth);
  p.huber = static_cast<float>(huber);
  p.rel_error = rel_error;
  p.delta_norm = delta_norm;
  p.calib = CalibParams{0.0f, 0.0f, 0.0f, 0.0f, static_cast<int>(height), static_cast<int>(width),
                        static_cast<float>(pixel_border), static_cast<float>(depth_eps)};
  p.K = K.data_ptr<float>();
  return track_solve(kTrackCalib, T_CkCf, X_f, meas_k, &valid_meas_k, sqrt_w, p, max_iters);
}

}  // namespace mast3r_slam
