// Shared device code of the kernels: Sim(3) math, Huber weight, residual rows with their local
// Jacobians, and block reductions.
//
// Conventions (as in mast3r_slam/lie.py): a pose is [tx, ty, tz, qx, qy, qz, qw, s] and acts as
// x -> s R x + t; tangent vectors are [tau(3), omega(3), sigma]; updates are left retractions
// Exp(xi) * T. Residual rows are err = h(P) - z with dh/dxi for a left perturbation of the pose
// that produced P (the backend's sign; the tracker uses r = -err, which gives the same step).
#pragma once

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

namespace mast3r_slam {

constexpr int kThreads = 256;  // threads per block of the reduction kernels

struct Sim3f {
  float t[3];
  float q[4];
  float s;
};

__device__ __forceinline__ Sim3f load_pose(const float* p) {
  Sim3f T;
#pragma unroll
  for (int i = 0; i < 3; i++) T.t[i] = p[i];
#pragma unroll
  for (int i = 0; i < 4; i++) T.q[i] = p[3 + i];
  T.s = p[7];
  return T;
}

__device__ __forceinline__ void store_pose(const Sim3f& T, float* p) {
#pragma unroll
  for (int i = 0; i < 3; i++) p[i] = T.t[i];
#pragma unroll
  for (int i = 0; i < 4; i++) p[3 + i] = T.q[i];
  p[7] = T.s;
}

// Hamilton product of xyzw quaternions.
__device__ __forceinline__ void quat_mul(const float* a, const float* b, float* out) {
  out[0] = a[3] * b[0] + a[0] * b[3] + a[1] * b[2] - a[2] * b[1];
  out[1] = a[3] * b[1] - a[0] * b[2] + a[1] * b[3] + a[2] * b[0];
  out[2] = a[3] * b[2] + a[0] * b[1] - a[1] * b[0] + a[2] * b[3];
  out[3] = a[3] * b[3] - a[0] * b[0] - a[1] * b[1] - a[2] * b[2];
}

// v + 2 (w (u x v) + u x (u x v)) for a unit quaternion (u, w).
__device__ __forceinline__ void quat_rotate(const float* q, const float* v, float* out) {
  const float uv0 = 2.0f * (q[1] * v[2] - q[2] * v[1]);
  const float uv1 = 2.0f * (q[2] * v[0] - q[0] * v[2]);
  const float uv2 = 2.0f * (q[0] * v[1] - q[1] * v[0]);
  out[0] = v[0] + q[3] * uv0 + (q[1] * uv2 - q[2] * uv1);
  out[1] = v[1] + q[3] * uv1 + (q[2] * uv0 - q[0] * uv2);
  out[2] = v[2] + q[3] * uv2 + (q[0] * uv1 - q[1] * uv0);
}

__device__ __forceinline__ void sim3_act(const Sim3f& T, const float* x, float* y) {
  float r[3];
  quat_rotate(T.q, x, r);
#pragma unroll
  for (int i = 0; i < 3; i++) y[i] = T.s * r[i] + T.t[i];
}

// a^-1 * b: s = sb / sa, q = qa^* qb, t = R_a^T (tb - ta) / sa.
__device__ __forceinline__ Sim3f sim3_inv_mul(const Sim3f& a, const Sim3f& b) {
  Sim3f out;
  const float sa_inv = 1.0f / a.s;
  out.s = sa_inv * b.s;
  const float qa_inv[4] = {-a.q[0], -a.q[1], -a.q[2], a.q[3]};
  quat_mul(qa_inv, b.q, out.q);
  const float dt[3] = {b.t[0] - a.t[0], b.t[1] - a.t[1], b.t[2] - a.t[2]};
  quat_rotate(qa_inv, dt, out.t);
#pragma unroll
  for (int i = 0; i < 3; i++) out.t[i] *= sa_inv;
  return out;
}

// Exp(xi) * T with the closed-form Sim(3) exponential (coefficients in double, spec 7.2).
__device__ inline Sim3f sim3_retr(const double* xi, const Sim3f& T) {
  const double eps = 1e-6;
  const double tau[3] = {xi[0], xi[1], xi[2]};
  const double w[3] = {xi[3], xi[4], xi[5]};
  const double sigma = xi[6];
  const double theta_sq = w[0] * w[0] + w[1] * w[1] + w[2] * w[2];
  const double theta = sqrt(theta_sq);
  double imag, real;
  if (theta < eps) {
    imag = 0.5 - theta_sq / 48.0 + theta_sq * theta_sq / 3840.0;
    real = 1.0 - theta_sq / 8.0 + theta_sq * theta_sq / 384.0;
  } else {
    imag = sin(0.5 * theta) / theta;
    real = cos(0.5 * theta);
  }
  const double scale = exp(sigma);
  double A, B, C;
  if (fabs(sigma) < eps) {
    C = 1.0;
    if (theta < eps) {
      A = 0.5;
      B = 1.0 / 6.0;
    } else {
      A = (1.0 - cos(theta)) / theta_sq;
      B = (theta - sin(theta)) / (theta_sq * theta);
    }
  } else {
    C = (scale - 1.0) / sigma;
    if (theta < eps) {
      const double s2 = sigma * sigma;
      A = ((sigma - 1.0) * scale + 1.0) / s2;
      B = (scale * 0.5 * s2 + scale - 1.0 - sigma * scale) / (s2 * sigma);
    } else {
      const double a = scale * sin(theta), b = scale * cos(theta), c = theta_sq + sigma * sigma;
      A = (a * sigma + (1.0 - b) * theta) / (theta * c);
      B = (C - ((b - 1.0) * sigma + a * theta) / c) / theta_sq;
    }
  }
  // t = W tau, W = C I + A [w]x + B [w]x^2
  const double wt[3] = {w[1] * tau[2] - w[2] * tau[1], w[2] * tau[0] - w[0] * tau[2], w[0] * tau[1] - w[1] * tau[0]};
  const double wwt[3] = {w[1] * wt[2] - w[2] * wt[1], w[2] * wt[0] - w[0] * wt[2], w[0] * wt[1] - w[1] * wt[0]};
  const float dt[3] = {(float)(C * tau[0] + A * wt[0] + B * wwt[0]), (float)(C * tau[1] + A * wt[1] + B * wwt[1]),
                       (float)(C * tau[2] + A * wt[2] + B * wwt[2])};
  const float dq[4] = {(float)(imag * w[0]), (float)(imag * w[1]), (float)(imag * w[2]), (float)real};
  const float ds = (float)scale;
  Sim3f out;
  quat_mul(dq, T.q, out.q);
  float rt[3];
  quat_rotate(dq, T.t, rt);
#pragma unroll
  for (int i = 0; i < 3; i++) out.t[i] = ds * rt[i] + dt[i];
  out.s = ds * T.s;
  return out;
}

// Ad(T^-1) as a 7x7 row-major matrix (double): [[R^T/s, -R^T[t]x/s, R^T t/s], [0, R^T, 0], [0, 0, 1]].
__device__ inline void sim3_adjoint_inv(const Sim3f& T, double* Ad) {
  const double x = T.q[0], y = T.q[1], z = T.q[2], w = T.q[3];
  const double R[9] = {1 - 2 * (y * y + z * z), 2 * (x * y - w * z),     2 * (x * z + w * y),
                       2 * (x * y + w * z),     1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                       2 * (x * z - w * y),     2 * (y * z + w * x),     1 - 2 * (x * x + y * y)};
  const double si = 1.0 / T.s;
  const double t[3] = {T.t[0], T.t[1], T.t[2]};
  const double tx[9] = {0, -t[2], t[1], t[2], 0, -t[0], -t[1], t[0], 0};
  for (int i = 0; i < 49; i++) Ad[i] = 0.0;
  for (int r = 0; r < 3; r++) {
    double Rt_t = 0.0;
    for (int c = 0; c < 3; c++) {
      Ad[r * 7 + c] = R[c * 3 + r] * si;  // R^T / s
      Ad[(3 + r) * 7 + 3 + c] = R[c * 3 + r];  // R^T
      double m = 0.0;  // (R^T [t]x)[r][c]
      for (int k = 0; k < 3; k++) m += R[k * 3 + r] * tx[k * 3 + c];
      Ad[r * 7 + 3 + c] = -m * si;
      Rt_t += R[c * 3 + r] * t[c];
    }
    Ad[r * 7 + 6] = Rt_t * si;
  }
  Ad[48] = 1.0;
}

__device__ __forceinline__ float huber_weight(float e, float k) {
  const float a = fabsf(e);
  return a < k ? 1.0f : k / a;
}

// ------------------------------------------------------------------------------------------------
// residual rows: err = h(P) - z, J = dh/dxi (left perturbation of the pose producing P),
// s = square-root information of the row (0 = unused). Each returns the number of rows.
// ------------------------------------------------------------------------------------------------
struct Rows4 {
  float err[4];
  float J[4][7];
  float s[4];
};

// Rays + distance: h = [P / |P|, |P|], z = [Xm / |Xm|, |Xm|].
__device__ __forceinline__ void rays_rows(const float* P, const float* Xm, float s_ray, float s_dist, Rows4& o) {
  const float nP = sqrtf(P[0] * P[0] + P[1] * P[1] + P[2] * P[2]);
  const float nX = sqrtf(Xm[0] * Xm[0] + Xm[1] * Xm[1] + Xm[2] * Xm[2]);
  const float iP = 1.0f / nP, iX = 1.0f / nX;
  const float psi[3] = {P[0] * iP, P[1] * iP, P[2] * iP};
#pragma unroll
  for (int a = 0; a < 3; a++) {
    o.err[a] = psi[a] - Xm[a] * iX;
#pragma unroll
    for (int b = 0; b < 3; b++) o.J[a][b] = ((a == b ? 1.0f : 0.0f) - psi[a] * psi[b]) * iP;
    o.J[a][6] = 0.0f;
    o.s[a] = s_ray;
  }
  // -[psi]x
  o.J[0][3] = 0.0f;    o.J[0][4] = psi[2];  o.J[0][5] = -psi[1];
  o.J[1][3] = -psi[2]; o.J[1][4] = 0.0f;    o.J[1][5] = psi[0];
  o.J[2][3] = psi[1];  o.J[2][4] = -psi[0]; o.J[2][5] = 0.0f;
  o.err[3] = nP - nX;
  o.J[3][0] = psi[0]; o.J[3][1] = psi[1]; o.J[3][2] = psi[2];
  o.J[3][3] = 0.0f;   o.J[3][4] = 0.0f;   o.J[3][5] = 0.0f;
  o.J[3][6] = nP;
  o.s[3] = s_dist;
}

struct CalibParams {
  float fx, fy, cx, cy;
  int height, width;
  float pixel_border, z_eps;
};

// Pixel + log depth: h = [fx x/z + cx, fy y/z + cy, log z], z = [u_t, v_t, logz_t]. Returns false
// (rows unused) outside the border or when a depth is below z_eps.
__device__ __forceinline__ bool calib_rows(const float* P, float u_t, float v_t, float logz_t, bool meas_ok, const CalibParams& c,
                                           float s_pixel, float s_depth, Rows4& o) {
  if (!(meas_ok && P[2] > c.z_eps)) return false;
  const float zinv = 1.0f / P[2];
  const float xz = P[0] * zinv, yz = P[1] * zinv;
  const float u = c.fx * xz + c.cx, v = c.fy * yz + c.cy;
  const bool inside = (u > c.pixel_border) && (u < c.width - 1 - c.pixel_border) && (v > c.pixel_border) &&
                      (v < c.height - 1 - c.pixel_border);
  if (!inside) return false;
  o.err[0] = u - u_t;
  o.err[1] = v - v_t;
  o.err[2] = logf(P[2]) - logz_t;
  const float Ju[7] = {c.fx * zinv, 0.0f, -c.fx * xz * zinv, -c.fx * xz * yz, c.fx * (1.0f + xz * xz), -c.fx * yz, 0.0f};
  const float Jv[7] = {0.0f, c.fy * zinv, -c.fy * yz * zinv, -c.fy * (1.0f + yz * yz), c.fy * xz * yz, c.fy * xz, 0.0f};
  const float Jz[7] = {0.0f, 0.0f, zinv, yz, -xz, 0.0f, 1.0f};
#pragma unroll
  for (int k = 0; k < 7; k++) {
    o.J[0][k] = Ju[k];
    o.J[1][k] = Jv[k];
    o.J[2][k] = Jz[k];
  }
  o.s[0] = s_pixel;
  o.s[1] = s_pixel;
  o.s[2] = s_depth;
  return true;
}

// 3D points: h = P, z = Xm.
__device__ __forceinline__ void point_rows(const float* P, const float* Xm, float s_point, Rows4& o) {
#pragma unroll
  for (int a = 0; a < 3; a++) {
    o.err[a] = P[a] - Xm[a];
#pragma unroll
    for (int b = 0; b < 3; b++) o.J[a][b] = (a == b) ? 1.0f : 0.0f;
    o.J[a][6] = P[a];
    o.s[a] = s_point;
  }
  o.J[0][3] = 0.0f;  o.J[0][4] = P[2];  o.J[0][5] = -P[1];
  o.J[1][3] = -P[2]; o.J[1][4] = 0.0f;  o.J[1][5] = P[0];
  o.J[2][3] = P[1];  o.J[2][4] = -P[0]; o.J[2][5] = 0.0f;
}

// ------------------------------------------------------------------------------------------------
// accumulation of the 7x7 normal equations: 28 upper-triangle entries of sum w J^T J, then the
// 7 entries of sum w err J, then (optionally) the cost 0.5 sum w err^2. kAcc = 36 slots.
// ------------------------------------------------------------------------------------------------
constexpr int kAcc = 36;

template <int R>
__device__ __forceinline__ void accumulate_rows(const Rows4& o, float huber, float* acc) {
#pragma unroll
  for (int r = 0; r < R; r++) {
    const float s = o.s[r];
    const float w = huber_weight(s * o.err[r], huber) * s * s;
    int l = 0;
#pragma unroll
    for (int a = 0; a < 7; a++) {
      const float wJa = w * o.J[r][a];
#pragma unroll
      for (int b = a; b < 7; b++) acc[l++] += wJa * o.J[r][b];
      acc[28 + a] += wJa * o.err[r];
    }
    acc[35] += 0.5f * w * o.err[r] * o.err[r];
  }
}

// Sum kAcc floats over the block (blockDim.x == kThreads) and add the totals to out (double) with
// one atomic per slot. `shared` holds kAcc * (kThreads / 32) floats.
__device__ inline void block_reduce_add(float* acc, float* shared, double* out) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int i = 0; i < kAcc; i++) {
    float v = acc[i];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    if (lane == 0) shared[warp * kAcc + i] = v;
  }
  __syncthreads();
  if (threadIdx.x < kAcc) {
    float v = 0.0f;
    for (int w = 0; w < kThreads / 32; w++) v += shared[w * kAcc + threadIdx.x];
    atomicAdd(out + threadIdx.x, (double)v);
  }
}

// Unpack 28 upper-triangle slots into a symmetric 7x7 matrix.
__device__ __forceinline__ void unpack_sym7(const double* acc, double* M) {
  int l = 0;
  for (int a = 0; a < 7; a++) {
    for (int b = a; b < 7; b++) {
      M[a * 7 + b] = acc[l];
      M[b * 7 + a] = acc[l];
      l++;
    }
  }
}

}  // namespace mast3r_slam
