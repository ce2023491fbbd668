// Python bindings of mast3r_slam._C: one def per op, same names as mast3r_slam.ops.
#include <torch/extension.h>

#include "bindings.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CUDA kernels of mast3r_slam.ops (matching, global Gauss-Newton, tracking)";
  m.attr("ABI_VERSION") = mast3r_slam::kAbiVersion;
  m.def("iter_proj", &mast3r_slam::iter_proj_cuda, "iterative projective matching");
  m.def("refine_matches", &mast3r_slam::refine_matches_cuda, "descriptor refinement of matches");
  m.def("prepare_rays", &mast3r_slam::prepare_rays_cuda, "fused prepare_rays (normalise + gradients)");
  m.def("match_project", &mast3r_slam::match_project_cuda, "fused projective stage of match (rays, iterations, distance check)");
  m.def("refine_matches_lin", &mast3r_slam::refine_matches_lin_cuda, "float16 refinement with the cast fused, linear indices out");
  m.def("gauss_newton_rays", &mast3r_slam::gauss_newton_rays_cuda, "global Gauss-Newton, ray + distance residuals");
  m.def("gauss_newton_calib", &mast3r_slam::gauss_newton_calib_cuda, "global Gauss-Newton, pixel + log-depth residuals");
  m.def("gauss_newton_points", &mast3r_slam::gauss_newton_points_cuda, "global Gauss-Newton, 3D point residuals");
  m.def("track_rays", &mast3r_slam::track_rays_cuda, "tracking IRLS, ray + distance residuals");
  m.def("track_calib", &mast3r_slam::track_calib_cuda, "tracking IRLS, pixel + log-depth residuals");
}
