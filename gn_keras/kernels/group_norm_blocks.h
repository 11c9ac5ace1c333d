// Building blocks of the fused Group Normalization kernels: element
// conversions, the (N, A, C) layout and its row blocks, the schedule both
// kernels share, and the per-block sweeps.  Included by group_norm_ops.cc
// only; see that file for the math and gn_keras/kernels/__init__.py for the
// build.

#ifndef GN_KERAS_KERNELS_GROUP_NORM_BLOCKS_H_
#define GN_KERAS_KERNELS_GROUP_NORM_BLOCKS_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "group_norm_activations.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/util/work_sharder.h"

namespace gn_keras {

using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;

// ---- element conversions: every kernel computes in float -------------------

inline float ToFloat(float v) { return v; }
inline float ToFloat(Eigen::half v) { return static_cast<float>(v); }
inline float ToFloat(Eigen::bfloat16 v) {
  uint16_t raw;
  std::memcpy(&raw, &v, sizeof(raw));
  uint32_t bits = static_cast<uint32_t>(raw) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

template <typename T>
inline T FromFloat(float v);
template <>
inline float FromFloat<float>(float v) { return v; }
template <>
inline Eigen::half FromFloat<Eigen::half>(float v) {
  return static_cast<Eigen::half>(v);
}
template <>
inline Eigen::bfloat16 FromFloat<Eigen::bfloat16>(float v) {
  // Round to nearest even, as TensorFlow's Cast does; NaN stays NaN.
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  uint16_t raw = std::isnan(v) ? uint16_t{0x7FC0} : static_cast<uint16_t>(rounded);
  Eigen::bfloat16 out;
  std::memcpy(&out, &raw, sizeof(raw));
  return out;
}

// ---- layout and blocks -------------------------------------------------------

struct Layout {
  int64_t n = 0, a = 0, c = 0, groups = 0, width = 0;
  int64_t rows_per_block = 1, blocks_per_sample = 1;

  int64_t Blocks() const { return n * blocks_per_sample; }
  int64_t BlockElements() const { return rows_per_block * c; }
  int64_t GroupCount() const { return a * width; }
};

// About 16K elements per block: a block of float32 stays in L2 between the
// two sweeps that compute its statistics.  At most 256 rows, so that each
// channel's float32 block sum adds few terms even when channels are few.
constexpr int64_t kBlockElements = 16384;
constexpr int64_t kMaxRowsPerBlock = 256;

inline tensorflow::Status MakeLayout(const Tensor& x, int64_t groups, Layout* layout) {
  if (x.dims() < 2) {
    return InvalidArgument("x must have rank >= 2, got shape ", x.shape().DebugString());
  }
  Layout& l = *layout;
  l.n = x.dim_size(0);
  l.c = x.dim_size(x.dims() - 1);
  l.a = 1;
  for (int i = 1; i < x.dims() - 1; ++i) l.a *= x.dim_size(i);
  if (l.c % groups != 0) {
    return InvalidArgument("groups=", groups, " does not divide the ", l.c, " channels");
  }
  l.groups = groups;
  l.width = l.c / groups;
  l.rows_per_block = std::max<int64_t>(
      1, std::min({l.a, kMaxRowsPerBlock, kBlockElements / std::max<int64_t>(l.c, 1)}));
  l.blocks_per_sample = l.a == 0 ? 0 : (l.a + l.rows_per_block - 1) / l.rows_per_block;
  return tensorflow::OkStatus();
}

// The schedule both kernels share: sweep(block) for every block, then
// finish(sample) for every sample, then write(block) for every block.
// With at least as many samples as threads, each thread takes whole
// samples, so the write sweep reads a sample that the first sweep has just
// brought into the core's cache; with fewer, each phase is spread over all
// blocks so that one sample still keeps every core busy.
// (Either layout: Layout here, or ChannelsFirstLayout.)
template <typename AnyLayout, typename Sweep, typename Finish, typename Write>
void RunPhases(OpKernelContext* context, const AnyLayout& l, int64_t cost_per_element,
               Sweep sweep, Finish finish, Write write) {
  auto* workers = context->device()->tensorflow_cpu_worker_threads();
  const int64_t block_cost = l.BlockElements() * cost_per_element;
  const int64_t per_sample = l.blocks_per_sample;
  if (l.n >= workers->num_threads) {
    tensorflow::Shard(workers->num_threads, workers->workers, l.n, 2 * block_cost * per_sample,
                      [&](int64_t begin, int64_t end) {
                        for (int64_t s = begin; s < end; ++s) {
                          for (int64_t b = 0; b < per_sample; ++b) sweep(s * per_sample + b);
                          finish(s);
                          for (int64_t b = 0; b < per_sample; ++b) write(s * per_sample + b);
                        }
                      });
    return;
  }
  auto each_block = [&](auto fn) {
    tensorflow::Shard(workers->num_threads, workers->workers, l.Blocks(), block_cost,
                      [&](int64_t begin, int64_t end) {
                        for (int64_t block = begin; block < end; ++block) fn(block);
                      });
  };
  each_block(sweep);
  for (int64_t s = 0; s < l.n; ++s) finish(s);
  each_block(write);
}

// Rows [first, last) of block `block`, as offsets into the flat tensor.
struct BlockRange {
  int64_t sample, first_row, rows;
};

inline BlockRange RangeOf(const Layout& l, int64_t block) {
  BlockRange r;
  r.sample = block / l.blocks_per_sample;
  r.first_row = (block % l.blocks_per_sample) * l.rows_per_block;
  r.rows = std::min(l.rows_per_block, l.a - r.first_row);
  return r;
}

// Per-(sample, channel) copy of each group's shift x[n, 0, g*W].
template <typename T>
std::vector<float> ChannelShifts(const T* x, const Layout& l, float* group_shift) {
  std::vector<float> shift(l.n * l.c);
  for (int64_t s = 0; s < l.n; ++s) {
    const T* first_row = x + s * l.a * l.c;
    for (int64_t g = 0; g < l.groups; ++g) {
      float value = ToFloat(first_row[g * l.width]);
      group_shift[s * l.groups + g] = value;
      std::fill_n(shift.data() + s * l.c + g * l.width, l.width, value);
    }
  }
  return shift;
}

// ---- forward -----------------------------------------------------------------

// Per block and channel: the block's sum of d and its centred sum of squares.
template <typename T>
void BlockMoments(const T* x, const float* shift, const Layout& l, const BlockRange& r,
                  float* sum, float* m2) {
  const int64_t c = l.c;
  const T* rows = x + (r.sample * l.a + r.first_row) * c;
  std::fill_n(sum, c, 0.0f);
  std::fill_n(m2, c, 0.0f);
  for (int64_t i = 0; i < r.rows; ++i) {
    const T* row = rows + i * c;
    for (int64_t j = 0; j < c; ++j) sum[j] += ToFloat(row[j]) - shift[j];
  }
  const float inv_rows = 1.0f / static_cast<float>(r.rows);
  std::vector<float> mean(c);
  for (int64_t j = 0; j < c; ++j) mean[j] = sum[j] * inv_rows;
  for (int64_t i = 0; i < r.rows; ++i) {
    const T* row = rows + i * c;
    for (int64_t j = 0; j < c; ++j) {
      float centred = (ToFloat(row[j]) - shift[j]) - mean[j];
      m2[j] += centred * centred;
    }
  }
}

// Merges sample s's block moments into its groups' mean of d and inverse std.
inline void GroupMoments(const std::vector<float>& sums, const std::vector<float>& m2s, const Layout& l,
                  int64_t s, float epsilon, float* delta, float* inv_std) {
  const double count = static_cast<double>(l.GroupCount());
  for (int64_t g = 0; g < l.groups; ++g) {
    double total = 0.0;
    for (int64_t b = 0; b < l.blocks_per_sample; ++b) {
      const float* sum = sums.data() + (s * l.blocks_per_sample + b) * l.c + g * l.width;
      for (int64_t j = 0; j < l.width; ++j) total += sum[j];
    }
    const double mean = total / count;
    double m2 = 0.0;
    for (int64_t b = 0; b < l.blocks_per_sample; ++b) {
      const int64_t block = s * l.blocks_per_sample + b;
      const double rows = static_cast<double>(RangeOf(l, block).rows);
      const float* sum = sums.data() + block * l.c + g * l.width;
      const float* m2_block = m2s.data() + block * l.c + g * l.width;
      for (int64_t j = 0; j < l.width; ++j) {
        const double gap = sum[j] / rows - mean;  // Chan et al.'s merge
        m2 += m2_block[j] + rows * gap * gap;
      }
    }
    delta[s * l.groups + g] = static_cast<float>(mean);
    inv_std[s * l.groups + g] = static_cast<float>(1.0 / std::sqrt(m2 / count + epsilon));
  }
}

// The normalized value (before the activation) of an element whose centred
// input is `centred` = (x - shift) - mean(d).  The backward's activation
// gradient recomputes it with this same expression, so that (for the ReLU)
// the gate's sign is the forward's.
inline float Normalized(float centred, float scale, float beta) { return centred * scale + beta; }

// `scale` is gamma / sigma, `centre` the group's mean(d), per channel.
template <typename T, Activation kAct>
void WriteNormalized(const T* x, const float* shift, const float* centre, const float* scale,
                     const float* beta, const Layout& l, const BlockRange& r, T* y) {
  const int64_t c = l.c;
  const int64_t start = (r.sample * l.a + r.first_row) * c;
  for (int64_t i = 0; i < r.rows; ++i) {
    const T* row = x + start + i * c;
    T* out = y + start + i * c;
    for (int64_t j = 0; j < c; ++j) {
      const float value = Normalized((ToFloat(row[j]) - shift[j]) - centre[j], scale[j], beta[j]);
      out[j] = FromFloat<T>(Activate<kAct>(value));
    }
  }
}

// ---- backward ----------------------------------------------------------------

// What the fused activation's gradient needs to recompute the forward's
// normalized value: its per-channel scale (gamma / sigma) and beta; unused
// without an activation.
struct ActivationGate {
  const float *scale, *beta;
};

// dy times the activation's derivative at the normalized value: for the
// ReLU dy where the value was positive (as TensorFlow's ReluGrad), else 0;
// for the SiLU dy * s * (1 + v * (1 - s)), s = sigmoid(v).
template <Activation kAct>
inline float GatedGradient(float dy, float centred, float scale, float beta) {
  if (kAct == Activation::kNone) return dy;
  const float v = Normalized(centred, scale, beta);
  if (kAct == Activation::kRelu) return v > 0.0f ? dy : 0.0f;
  const float s = Sigmoid(v);
  return dy * (s * (1.0f + v * (1.0f - s)));
}

// Per block and channel: sum of dy and sum of dy * (d - mean(d)), dy taken
// through the fused activation's derivative when there is one.
// (__restrict__: with the gate's two arrays, too many pointers for GCC to
// check for overlap at run time, and the loops would not be vectorized.)
template <typename T, Activation kAct>
void BlockGradientSums(const T* __restrict__ x, const T* __restrict__ dy,
                       const float* __restrict__ centre_shift, const float* __restrict__ centre,
                       const ActivationGate& gate, const Layout& l, const BlockRange& r,
                       float* __restrict__ sum_dy, float* __restrict__ sum_dy_centred) {
  constexpr bool kGated = kAct != Activation::kNone;
  const float* __restrict__ gate_scale = gate.scale;
  const float* __restrict__ gate_beta = gate.beta;
  const int64_t c = l.c;
  const int64_t start = (r.sample * l.a + r.first_row) * c;
  std::fill_n(sum_dy, c, 0.0f);
  std::fill_n(sum_dy_centred, c, 0.0f);
  for (int64_t i = 0; i < r.rows; ++i) {
    const T* x_row = x + start + i * c;
    const T* dy_row = dy + start + i * c;
    for (int64_t j = 0; j < c; ++j) {
      const float centred = (ToFloat(x_row[j]) - centre_shift[j]) - centre[j];
      const float g = GatedGradient<kAct>(ToFloat(dy_row[j]), centred,
                                          kGated ? gate_scale[j] : 0.0f,
                                          kGated ? gate_beta[j] : 0.0f);
      sum_dy[j] += g;
      sum_dy_centred[j] += g * centred;
    }
  }
}

template <typename T, Activation kAct>
void WriteInputGradient(const T* __restrict__ x, const T* __restrict__ dy,
                        const float* __restrict__ centre_shift, const float* __restrict__ centre,
                        const ActivationGate& gate, const float* __restrict__ dy_scale,
                        const float* __restrict__ centred_scale, const float* __restrict__ bias,
                        const Layout& l, const BlockRange& r, T* __restrict__ dx) {
  constexpr bool kGated = kAct != Activation::kNone;
  const float* __restrict__ gate_scale = gate.scale;
  const float* __restrict__ gate_beta = gate.beta;
  const int64_t c = l.c;
  const int64_t start = (r.sample * l.a + r.first_row) * c;
  for (int64_t i = 0; i < r.rows; ++i) {
    const T* x_row = x + start + i * c;
    const T* dy_row = dy + start + i * c;
    T* out = dx + start + i * c;
    for (int64_t j = 0; j < c; ++j) {
      const float centred = (ToFloat(x_row[j]) - centre_shift[j]) - centre[j];
      const float g = GatedGradient<kAct>(ToFloat(dy_row[j]), centred,
                                          kGated ? gate_scale[j] : 0.0f,
                                          kGated ? gate_beta[j] : 0.0f);
      out[j] = FromFloat<T>(dy_scale[j] * g - centred_scale[j] * centred - bias[j]);
    }
  }
}

// Per-(sample, channel) vectors of a per-(sample, group) statistic.
inline std::vector<float> PerChannel(const float* per_group, const Layout& l) {
  std::vector<float> out(l.n * l.c);
  for (int64_t s = 0; s < l.n; ++s) {
    for (int64_t j = 0; j < l.c; ++j) out[s * l.c + j] = per_group[s * l.groups + j / l.width];
  }
  return out;
}

// One sample's share of dbeta and dgamma, and its per-channel
// coefficients of dx, from its per-channel sums of dy and dy * (d - mean(d))
// (see InputGradientTerms); `inv_std` holds the sample's G values.
inline void GradientTermsFromSums(const std::vector<double>& sum_dy,
                                  const std::vector<double>& sum_dy_centred, const float* gamma,
                                  const float* inv_std, int64_t groups, int64_t width,
                                  double count, double* dbeta, double* dgamma, float* dy_scale,
                                  float* centred_scale, float* bias) {
  for (int64_t g = 0; g < groups; ++g) {
    const double istd = inv_std[g];
    double mean_gdy = 0.0, mean_gdy_xhat = 0.0;
    for (int64_t j = g * width; j < (g + 1) * width; ++j) {
      dbeta[j] = sum_dy[j];
      dgamma[j] = sum_dy_centred[j] * istd;
      mean_gdy += gamma[j] * sum_dy[j];
      mean_gdy_xhat += gamma[j] * sum_dy_centred[j];
    }
    mean_gdy /= count;
    mean_gdy_xhat *= istd / count;
    for (int64_t j = g * width; j < (g + 1) * width; ++j) {
      dy_scale[j] = static_cast<float>(istd * gamma[j]);
      centred_scale[j] = static_cast<float>(istd * istd * mean_gdy_xhat);
      bias[j] = static_cast<float>(istd * mean_gdy);
    }
  }
}

// Sample s's share of dbeta and dgamma, and its per-channel coefficients of
// dx = dy_scale * dy - centred_scale * (d - mean(d)) - bias.  Per group, the
// means of gamma*dy and gamma*dy*xhat are the terms that the mean and the
// variance contribute to dx.
inline void InputGradientTerms(const std::vector<float>& sums, const std::vector<float>& centred_sums,
                        const float* gamma, const float* inv_std, const Layout& l, int64_t s,
                        double* dbeta, double* dgamma, float* dy_scale, float* centred_scale,
                        float* bias) {
  std::vector<double> sum_dy(l.c, 0.0), sum_dy_centred(l.c, 0.0);
  for (int64_t b = 0; b < l.blocks_per_sample; ++b) {
    const int64_t block = s * l.blocks_per_sample + b;
    for (int64_t j = 0; j < l.c; ++j) {
      sum_dy[j] += sums[block * l.c + j];
      sum_dy_centred[j] += centred_sums[block * l.c + j];
    }
  }
  GradientTermsFromSums(sum_dy, sum_dy_centred, gamma, inv_std + s * l.groups, l.groups, l.width,
                        static_cast<double>(l.GroupCount()), dbeta, dgamma, dy_scale,
                        centred_scale, bias);
}

}  // namespace gn_keras

#endif  // GN_KERAS_KERNELS_GROUP_NORM_BLOCKS_H_
