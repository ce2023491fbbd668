// Declarations of the host functions of mast3r_slam._C (one per op) and input checks.
//
// Naming, from Python to CUDA: ops.iter_proj (Python) -> binding "iter_proj" (ext.cpp) ->
// host function iter_proj_cuda (matching.cu) -> kernel iter_proj_kernel. Argument validation with
// readable messages happens in the Python wrappers (mast3r_slam/ops/__init__.py); the checks here
// only guard against misuse of the raw bindings.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#define M3R_CHECK_CUDA(x) TORCH_CHECK((x).is_cuda(), #x " must be a CUDA tensor")
#define M3R_CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define M3R_CHECK_DTYPE(x, dt) TORCH_CHECK((x).scalar_type() == (dt), #x " has the wrong dtype")
#define M3R_CHECK_INPUT(x, dt) \
  M3R_CHECK_CUDA(x);           \
  M3R_CHECK_CONTIGUOUS(x);     \
  M3R_CHECK_DTYPE(x, dt)

namespace mast3r_slam {

// Bumped with every binding signature change (checked by mast3r_slam/ops/_backend.py).
constexpr int kAbiVersion = 2;

// matching.cu
std::vector<at::Tensor> iter_proj_cuda(const at::Tensor& rays_with_grad, const at::Tensor& target_rays, const at::Tensor& p_init,
                                       int64_t max_iter, double lambda_init, double cost_thresh);
at::Tensor refine_matches_cuda(const at::Tensor& D11, const at::Tensor& D21, const at::Tensor& p1, int64_t radius,
                               int64_t dilation_max);
// fused paths of matching.prepare_rays / matching.match (norm_mode: see matching.cu)
std::vector<at::Tensor> prepare_rays_cuda(const at::Tensor& X11, const at::Tensor& X21, int64_t norm_mode);
std::vector<at::Tensor> match_project_cuda(const at::Tensor& X11, const at::Tensor& X21, const c10::optional<at::Tensor>& idx_init,
                                           int64_t max_iter, double lambda_init, double cost_thresh, double dist_thresh,
                                           int64_t norm_mode);
at::Tensor refine_matches_lin_cuda(const at::Tensor& D11, const at::Tensor& D21, const at::Tensor& p1, int64_t radius,
                                   int64_t dilation_max, bool tiled);

// gn.cu: global Gauss-Newton; Twc is updated in place, the last step [n-1, 7] is returned. p_ii2jj
// (optional [E, HW, 2] float32 sub-pixel matches) replaces the measurement Xs[ii][idx] by the
// bilinear interpolation of Xs[ii] there (rays/points need the image width).
at::Tensor gauss_newton_rays_cuda(at::Tensor Twc, const at::Tensor& Xs, const at::Tensor& Cs, const at::Tensor& ii,
                                  const at::Tensor& jj, const at::Tensor& idx_ii2jj, const at::Tensor& valid_match,
                                  const at::Tensor& Q, double sigma_ray, double sigma_dist, double C_thresh, double Q_thresh,
                                  int64_t max_iter, double delta_thresh, double huber, const c10::optional<at::Tensor>& p_ii2jj,
                                  c10::optional<int64_t> width);
at::Tensor gauss_newton_calib_cuda(at::Tensor Twc, const at::Tensor& Xs, const at::Tensor& Cs, const at::Tensor& K,
                                   const at::Tensor& ii, const at::Tensor& jj, const at::Tensor& idx_ii2jj,
                                   const at::Tensor& valid_match, const at::Tensor& Q, int64_t height, int64_t width,
                                   int64_t pixel_border, double z_eps, double sigma_pixel, double sigma_depth, double C_thresh,
                                   double Q_thresh, int64_t max_iter, double delta_thresh, double huber,
                                   const c10::optional<at::Tensor>& p_ii2jj);
at::Tensor gauss_newton_points_cuda(at::Tensor Twc, const at::Tensor& Xs, const at::Tensor& Cs, const at::Tensor& ii,
                                    const at::Tensor& jj, const at::Tensor& idx_ii2jj, const at::Tensor& valid_match,
                                    const at::Tensor& Q, double sigma_point, double C_thresh, double Q_thresh, int64_t max_iter,
                                    double delta_thresh, double huber, const c10::optional<at::Tensor>& p_ii2jj,
                                    c10::optional<int64_t> width);

// tracking.cu: frame -> keyframe IRLS; returns [T_CkCf [8], num_iters int32 [], converged bool [],
// failed bool [], cost float64 []], all on the device, without a host synchronisation
std::vector<at::Tensor> track_rays_cuda(const at::Tensor& T_CkCf, const at::Tensor& X_f, const at::Tensor& X_k,
                                        const at::Tensor& sqrt_w, double sigma_ray, double sigma_dist, double huber,
                                        int64_t max_iters, double rel_error, double delta_norm);
std::vector<at::Tensor> track_calib_cuda(const at::Tensor& T_CkCf, const at::Tensor& X_f, const at::Tensor& meas_k,
                                         const at::Tensor& valid_meas_k, const at::Tensor& sqrt_w, const at::Tensor& K,
                                         int64_t height, int64_t width, double sigma_pixel, double sigma_depth,
                                         double pixel_border, double depth_eps, double huber, int64_t max_iters,
                                         double rel_error, double delta_norm);

}  // namespace mast3r_slam
