// Solver cores of soap_kernels::refresh_eigenbasis, written once for the CPU and the GPU.
//
// Each core works on one n x n float64 matrix (row-major, leading dimension n) and is parameterised by a
// "team": the set of workers that cooperate on that matrix. On the CPU the team is one thread
// (SerialTeam below: rank 0 of 1, sync() does nothing); on the GPU it is one thread block (BlockTeam in
// csrc/cuda/refresh_eigenbasis.cu: rank = threadIdx.x, sync() = __syncthreads()). Every loop is written
// as `for (i = rank; i < count; i += size)`, or over a TeamGrid for 2-D loops, with a sync() between phases
// that depend on each other, so the same code is the sequential algorithm on the host and the parallel one on
// the device.
//
// Cores:
//   cholesky_upper_inverse  G = R^T R (Cholesky, R upper triangular), then G <- R^{-1}   (n^3/3 + n^3/3 flops)
//   jacobi_eigen            B = V diag(lambda) V^T by parallel-order (round-robin) cyclic Jacobi, fixed sweep cap
// Constants shared with the torch reference (soap_kernels/ops/refresh_eigenbasis.py) are defined here too.
#pragma once

#include <cmath>
#include <cstdint>

#include "soap_kernels/host_device.h"

namespace soap_kernels {
namespace eigen_refresh {

// Unit roundoff of float64, the precision every refresh is computed in (float32 inputs included: the
// Gram matrices of the QR path square condition numbers, which float32 cannot hold).
constexpr double kUnitRoundoff = 1.1102230246251565e-16;
constexpr double kEpsilon = 2.220446049250313e-16;

// "qr": the matrix orthonormalised is X = L Q_sorted / ||L||_F + delta * Q_sorted, i.e. the power step of
// L + delta ||L||_F I. The shift is a backward perturbation of L at (float32: below) the rounding of the
// input dtype; it makes X full rank (cond(X) <= 1 / delta) so that Cholesky-based QR completes the basis
// of a rank-deficient factor with the old basis's directions instead of noise.
constexpr double kQrRegularisationFloat64 = 1e-12;
constexpr double kQrRegularisationFloat32 = 5.9604644775390625e-08;  // 2^-24, float32's unit roundoff

// Shifted CholeskyQR (Fukaya, Kannan, Nakatsukasa, Yamamoto, Yanagisawa 2020): the first pass factors
// X^T X + s I with s = 11 (m n + n (n + 1)) u ||X||_F^2, which bounds cond(X R^{-1}) by about u^{-1/2}
// (and by 1 / delta); plain passes then square the orthogonality error away: float64 inputs take two
// (cond(X) up to 1e12 -> ~u), float32 inputs one (cond(X) <= 1.7e7 -> ~1e-7, within float32 rounding).
constexpr int kQrPlainPassesFloat64 = 2;
constexpr int kQrPlainPassesFloat32 = 1;
SOAP_KERNELS_HOST_DEVICE double cholesky_qr_shift(int64_t n, double frobenius_squared) {
  const double m = static_cast<double>(n);
  return 11.0 * (m * m + m * (m + 1.0)) * kUnitRoundoff * frobenius_squared;
}

// Pivots of the Cholesky factorisation are clamped from below so that a breakdown (a Gram matrix that is
// not numerically positive definite) yields huge but finite numbers, never NaN. The caller checks the
// result for finiteness and keeps the previous basis where it is not.
constexpr double kPivotFloor = 1e-280;

struct SerialTeam {
  SOAP_KERNELS_HOST_DEVICE int rank() const { return 0; }
  SOAP_KERNELS_HOST_DEVICE int size() const { return 1; }
  SOAP_KERNELS_HOST_DEVICE void sync() const {}
  SOAP_KERNELS_HOST_DEVICE bool any(bool flag) const { return flag; }
  SOAP_KERNELS_HOST_DEVICE double sum(double value) const { return value; }
};

// A team laid out as a grid of `rows` x `cols` workers (cols = min(size, width)) for 2-D loops over a matrix
// `width` columns wide: worker (row, col) takes rows row, row + rows, ... and columns col, col + cols, ...
// Workers past rows * cols sit the 2-D loops out. On a GPU consecutive workers then touch consecutive
// columns, and no loop divides a flat index per element (64-bit integer division costs tens of instructions
// there); one worker (SerialTeam) gets plain nested loops.
struct TeamGrid {
  int row, rows, col, cols;
  SOAP_KERNELS_HOST_DEVICE bool active() const { return row < rows; }
  // The first of this worker's columns that is >= first.
  SOAP_KERNELS_HOST_DEVICE int64_t first_column(int64_t first) const {
    return first + ((col - first) % cols + cols) % cols;
  }
};

template <typename Team>
SOAP_KERNELS_HOST_DEVICE TeamGrid team_grid(const Team& team, int64_t width) {
  const int size = team.size(), rank = team.rank();
  const int cols = width < size ? static_cast<int>(width > 0 ? width : 1) : size;
  return TeamGrid{rank / cols, size / cols, rank % cols, cols};
}

// In place: on entry g holds a symmetric positive definite G (only the upper triangle is read); on exit
// the upper triangle holds W = R^{-1} where G = R^T R, and the strict lower triangle holds zeros.
// `scratch` holds 2 n doubles. Both halves are right-looking, so every step is one parallel update with two
// barriers (a left-looking triangular inverse would be a chain of dot products, one worker each):
//   Cholesky, k = 0..n-1:  R_kk = sqrt(G_kk); R_k,j = G_kj / R_kk (j > k); G_ij -= R_ki R_kj (k < i <= j)
//   inverse,  l = 0..n-1:  W_ll = 1 / R_ll; W_il = -A_il W_ll (i < l), where A_ij = sum_{m < j} W_im R_mj
//                          is accumulated in place of R_ij: A_ij += W_il R_lj (i <= l < j), from W R = I.
// Pivots below kPivotFloor are clamped (see there). The result does not depend on the team's size.
template <typename Team>
SOAP_KERNELS_HOST_DEVICE void cholesky_upper_inverse(const Team& team, double* g, int64_t n, double* scratch) {
  const int rank = team.rank(), size = team.size();
  const TeamGrid grid = team_grid(team, n);
  for (int64_t k = 0; k < n; ++k) {
    team.sync();
    double pivot = g[k * n + k];
    if (!(pivot > kPivotFloor)) pivot = kPivotFloor;  // also catches NaN
    const double r_kk = sqrt(pivot);
    const double inverse_r_kk = 1.0 / r_kk;
    for (int64_t j = k + 1 + rank; j < n; j += size) g[k * n + j] *= inverse_r_kk;
    team.sync();  // every worker has read g[k][k] and row k is final
    if (rank == 0) g[k * n + k] = r_kk;
    if (!grid.active()) continue;
    const double* r_k = g + k * n;
    for (int64_t i = k + 1 + grid.row; i < n; i += grid.rows) {
      const double r_ki = r_k[i];
      double* row = g + i * n;
      for (int64_t j = grid.first_column(i); j < n; j += grid.cols) row[j] -= r_ki * r_k[j];
    }
  }
  team.sync();
  if (grid.active()) {
    for (int64_t i = 1 + grid.row; i < n; i += grid.rows) {
      for (int64_t j = grid.col; j < i; j += grid.cols) g[i * n + j] = 0.0;
    }
  }
  double* column = scratch;  // W[0..l, l], final
  double* row_l = scratch + n;  // R[l, l+1..n-1], read before the update overwrites it
  for (int64_t l = 0; l < n; ++l) {
    team.sync();  // A[:, l] is complete, and the previous step's readers of column and row_l are done
    const double w_ll = 1.0 / g[l * n + l];
    for (int64_t i = rank; i <= l; i += size) column[i] = i == l ? w_ll : -g[i * n + l] * w_ll;
    for (int64_t j = l + 1 + rank; j < n; j += size) row_l[j] = g[l * n + j];
    team.sync();
    for (int64_t i = rank; i <= l; i += size) g[i * n + l] = column[i];
    if (!grid.active()) continue;
    for (int64_t i = grid.row; i <= l; i += grid.rows) {
      const double w_il = column[i];
      double* row = g + i * n;
      const int64_t first = grid.first_column(l + 1);
      if (i == l) {  // A_lj starts here: R_lj's slot receives its first term
        for (int64_t j = first; j < n; j += grid.cols) row[j] = w_il * row_l[j];
      } else {
        for (int64_t j = first; j < n; j += grid.cols) row[j] += w_il * row_l[j];
      }
    }
  }
  team.sync();
}

// The round-robin ("circle method") tournament on m = n rounded up to even players: in round r
// (0 <= r < m - 1) pair k (0 <= k < m / 2) is (player(k), player(m - 1 - k)); every pair of indices meets
// exactly once per sweep and the m / 2 pairs of one round are disjoint, so their rotations commute and are
// applied together. A player >= n (the bye when n is odd) sits the round out.
SOAP_KERNELS_HOST_DEVICE int64_t round_robin_player(int64_t position, int64_t round, int64_t m) {
  return position == 0 ? 0 : 1 + (position - 1 + round) % (m - 1);
}

// (x, y) <- (c x - s y, s x + c y) elementwise over two rows of length n.
SOAP_KERNELS_HOST_DEVICE void rotate_rows(double* __restrict__ x, double* __restrict__ y, int64_t n, double c,
                                          double s) {
  for (int64_t j = 0; j < n; ++j) {
    const double xj = x[j], yj = y[j];
    x[j] = c * xj - s * yj;
    y[j] = s * xj + c * yj;
  }
}

// Scratch for one matrix's Jacobi rounds: m / 2 entries each.
struct JacobiScratch {
  double* cosine;
  double* sine;
  double* new_pp;  // the rotated diagonal entries, computed from the 2x2 block (more accurate than updates)
  double* new_qq;
  int64_t* p;  // -1 where the pair does not rotate this round
  int64_t* q;
};

// Eigendecomposition of a symmetric B (n x n, row-major), in place: on exit B is diagonal up to the
// convergence threshold, its diagonal holds the eigenvalues, and v_t (n x n) holds V^T, i.e. row k of v_t
// is the eigenvector that Jacobi rotated out of coordinate k (V = product of the rotations, so from a
// nearly diagonal B, V is nearly the identity and column k stays close to e_k).
//
// Rotation for pair (p, q) with b_pq != 0 (Golub & Van Loan, sym.schur2):
//   tau = (b_qq - b_pp) / (2 b_pq),  t = sign(tau) / (|tau| + sqrt(1 + tau^2)),  c = 1/sqrt(1+t^2), s = t c
//   B <- J^T B J, V <- V J, with J = I except J_pp = J_qq = c, J_pq = s, J_qp = -s; then b_pq = 0,
//   b_pp <- b_pp - t b_pq, b_qq <- b_qq + t b_pq.
// A pair rotates only where |b_pq| > eps ||B||_F and |b_pq| > eps sqrt(|b_pp b_qq|): smaller entries
// change no eigenvalue or eigenvector beyond rounding. A sweep in which no pair rotates ends the
// iteration (decided by the team, never by the host); at most max_sweeps sweeps run.
// Returns the number of sweeps that rotated something.
template <typename Team>
SOAP_KERNELS_HOST_DEVICE int64_t jacobi_eigen(const Team& team, double* b, double* v_t, int64_t n, int64_t max_sweeps,
                                              const JacobiScratch& scratch) {
  const int rank = team.rank(), size = team.size();
  const int64_t m = n + (n & 1);
  const int64_t pairs = m / 2;
  const TeamGrid by_columns = team_grid(team, n), by_pairs = team_grid(team, pairs);
  if (by_columns.active()) {
    for (int64_t i = by_columns.row; i < n; i += by_columns.rows) {
      for (int64_t j = by_columns.col; j < n; j += by_columns.cols) v_t[i * n + j] = i == j ? 1.0 : 0.0;
    }
  }
  double local_squares = 0.0;
  for (int64_t index = rank; index < n * n; index += size) local_squares += b[index] * b[index];
  const double absolute_floor = kEpsilon * sqrt(team.sum(local_squares));
  int64_t sweeps = 0;
  for (int64_t sweep = 0; sweep < max_sweeps; ++sweep) {
    bool rotated = false;
    for (int64_t round = 0; round < m - 1; ++round) {
      team.sync();
      for (int64_t k = rank; k < pairs; k += size) {
        int64_t p = round_robin_player(k, round, m), q = round_robin_player(m - 1 - k, round, m);
        if (p > q) {
          const int64_t swap = p;
          p = q;
          q = swap;
        }
        scratch.p[k] = -1;
        if (q >= n) continue;
        const double b_pp = b[p * n + p], b_qq = b[q * n + q], b_pq = b[p * n + q];
        const double magnitude = fabs(b_pq);
        if (!(magnitude > absolute_floor) || !(magnitude > kEpsilon * sqrt(fabs(b_pp * b_qq)))) continue;
        const double tau = (b_qq - b_pp) / (2.0 * b_pq);
        // For |tau| > 1e150, tau^2 overflows; t = 1 / (2 tau) to full precision there.
        const double t = fabs(tau) > 1e150 ? 0.5 / tau
                                           : (tau >= 0.0 ? 1.0 : -1.0) / (fabs(tau) + sqrt(1.0 + tau * tau));
        const double c = 1.0 / sqrt(1.0 + t * t);
        scratch.cosine[k] = c;
        scratch.sine[k] = t * c;
        scratch.new_pp[k] = b_pp - t * b_pq;
        scratch.new_qq[k] = b_qq + t * b_pq;
        scratch.p[k] = p;
        scratch.q[k] = q;
        rotated = true;
      }
      team.sync();
      // Rows p, q of B (B <- J^T B) and of V^T (V <- V J). A team spreads them over its grid (pairs x columns);
      // one worker runs the same arithmetic as plain nested loops (vectorisable).
      if (size == 1) {
        for (int64_t k = 0; k < pairs; ++k) {
          const int64_t p = scratch.p[k];
          if (p < 0) continue;
          rotate_rows(b + p * n, b + scratch.q[k] * n, n, scratch.cosine[k], scratch.sine[k]);
          rotate_rows(v_t + p * n, v_t + scratch.q[k] * n, n, scratch.cosine[k], scratch.sine[k]);
        }
      } else if (by_columns.active()) {
        for (int64_t k = by_columns.row; k < pairs; k += by_columns.rows) {
          const int64_t p = scratch.p[k];
          if (p < 0) continue;
          const int64_t q = scratch.q[k];
          const double c = scratch.cosine[k], s = scratch.sine[k];
          for (int64_t j = by_columns.col; j < n; j += by_columns.cols) {
            const double bp = b[p * n + j], bq = b[q * n + j];
            b[p * n + j] = c * bp - s * bq;
            b[q * n + j] = s * bp + c * bq;
            const double vp = v_t[p * n + j], vq = v_t[q * n + j];
            v_t[p * n + j] = c * vp - s * vq;
            v_t[q * n + j] = s * vp + c * vq;
          }
        }
      }
      team.sync();
      // Columns p, q of B (B <- B J), row by row so that the host walks memory in order.
      if (size == 1) {
        for (int64_t i = 0; i < n; ++i) {
          double* row = b + i * n;
          for (int64_t k = 0; k < pairs; ++k) {
            const int64_t p = scratch.p[k];
            if (p < 0) continue;
            const int64_t q = scratch.q[k];
            const double c = scratch.cosine[k], s = scratch.sine[k];
            const double bp = row[p], bq = row[q];
            row[p] = c * bp - s * bq;
            row[q] = s * bp + c * bq;
          }
        }
      } else if (by_pairs.active()) {
        for (int64_t i = by_pairs.row; i < n; i += by_pairs.rows) {
          for (int64_t k = by_pairs.col; k < pairs; k += by_pairs.cols) {
            const int64_t p = scratch.p[k];
            if (p < 0) continue;
            const int64_t q = scratch.q[k];
            const double c = scratch.cosine[k], s = scratch.sine[k];
            const double bp = b[i * n + p], bq = b[i * n + q];
            b[i * n + p] = c * bp - s * bq;
            b[i * n + q] = s * bp + c * bq;
          }
        }
      }
      team.sync();
      for (int64_t k = rank; k < pairs; k += size) {
        const int64_t p = scratch.p[k];
        if (p < 0) continue;
        const int64_t q = scratch.q[k];
        b[p * n + p] = scratch.new_pp[k];
        b[q * n + q] = scratch.new_qq[k];
        b[p * n + q] = 0.0;
        b[q * n + p] = 0.0;
      }
    }
    team.sync();
    if (!team.any(rotated)) break;
    ++sweeps;
  }
  team.sync();
  return sweeps;
}

}  // namespace eigen_refresh
}  // namespace soap_kernels
