// The channels-first variant of the fused kernels' sweeps: x viewed as
// (N, C, S), S the product of every axis after the channel axis, so that
// each (sample, channel) row of S values is contiguous and each group is
// one contiguous span of W rows.  Included by group_norm_ops.cc, after
// group_norm_blocks.h (whose element conversions, activations, schedule
// and gradient terms it shares); the math is the channels-last kernels'.
//
// Rows are cut into segments of at most kSegmentElements values; a block is
// a run of whole segments of one sample, about kBlockElements values long.
// Every segment keeps its own float32 sum and centred sum of squares (the
// segment is in cache for both), each added in kLanes interleaved
// accumulators (which the compiler vectorizes; a float sum in one
// accumulator it may not reorder), merged per group in double with Chan's
// formula: the statistics are exact to float32 for any group size.

#ifndef GN_KERAS_KERNELS_GROUP_NORM_CHANNELS_FIRST_H_
#define GN_KERAS_KERNELS_GROUP_NORM_CHANNELS_FIRST_H_

#include "group_norm_blocks.h"

namespace gn_keras {

constexpr int64_t kSegmentElements = 4096;
constexpr int kLanes = 16;

// Adds terms(i, &a, &b) for i in [0, length) into *a and *b, lane by lane.
template <typename Terms>
inline void LaneSums(int64_t length, Terms terms, float* a, float* b) {
  float lane_a[kLanes] = {}, lane_b[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= length; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) terms(i + k, &lane_a[k], &lane_b[k]);
  }
  float tail_a = 0.0f, tail_b = 0.0f;
  for (; i < length; ++i) terms(i, &tail_a, &tail_b);
  for (int k = 0; k < kLanes; ++k) {
    tail_a += lane_a[k];
    tail_b += lane_b[k];
  }
  *a = tail_a;
  *b = tail_b;
}

struct ChannelsFirstLayout {
  int64_t n = 0, c = 0, s = 0, groups = 0, width = 0;
  int64_t segment = 1, segments_per_row = 1, segments_per_block = 1, blocks_per_sample = 1;

  int64_t Blocks() const { return n * blocks_per_sample; }
  int64_t BlockElements() const { return segments_per_block * segment; }
  int64_t GroupCount() const { return width * s; }
  int64_t SegmentsPerSample() const { return c * segments_per_row; }
  // Segment k (of the whole tensor): its row, first element and length.
  int64_t RowOf(int64_t k) const { return k / segments_per_row; }
  int64_t StartOf(int64_t k) const { return RowOf(k) * s + (k % segments_per_row) * segment; }
  int64_t LengthOf(int64_t k) const {
    return std::min(segment, s - (k % segments_per_row) * segment);
  }
  // The segments [first, last) of block `block`.
  void SegmentsOf(int64_t block, int64_t* first, int64_t* last) const {
    const int64_t sample = block / blocks_per_sample;
    const int64_t begin = sample * SegmentsPerSample();
    *first = begin + (block % blocks_per_sample) * segments_per_block;
    *last = std::min(*first + segments_per_block, begin + SegmentsPerSample());
  }
};

inline tensorflow::Status MakeChannelsFirstLayout(const Tensor& x, int64_t groups,
                                                  ChannelsFirstLayout* layout) {
  if (x.dims() < 2) {
    return InvalidArgument("x must have rank >= 2, got shape ", x.shape().DebugString());
  }
  ChannelsFirstLayout& l = *layout;
  l.n = x.dim_size(0);
  l.c = x.dim_size(1);
  l.s = 1;
  for (int i = 2; i < x.dims(); ++i) l.s *= x.dim_size(i);
  if (l.c % groups != 0) {
    return InvalidArgument("groups=", groups, " does not divide the ", l.c, " channels");
  }
  l.groups = groups;
  l.width = l.c / groups;
  l.segment = std::max<int64_t>(1, std::min(l.s, kSegmentElements));
  l.segments_per_row = l.s == 0 ? 1 : (l.s + l.segment - 1) / l.segment;
  l.segments_per_block = std::max<int64_t>(1, kBlockElements / l.segment);
  const int64_t per_sample = l.SegmentsPerSample();
  l.blocks_per_sample = (per_sample + l.segments_per_block - 1) / l.segments_per_block;
  return tensorflow::OkStatus();
}

// Calls fn(k, row, start, length) for each segment k of block `block`.
template <typename Fn>
inline void ForEachSegment(const ChannelsFirstLayout& l, int64_t block, Fn fn) {
  int64_t first, last;
  l.SegmentsOf(block, &first, &last);
  for (int64_t k = first; k < last; ++k) fn(k, l.RowOf(k), l.StartOf(k), l.LengthOf(k));
}

// Per-(sample, group) shift x[n, g*W, 0...], the element the channels-last
// kernels shift by, and a per-(sample, channel) copy of it.
template <typename T>
std::vector<float> ChannelsFirstShifts(const T* x, const ChannelsFirstLayout& l,
                                       float* group_shift) {
  std::vector<float> shift(l.n * l.c);
  for (int64_t n = 0; n < l.n; ++n) {
    for (int64_t g = 0; g < l.groups; ++g) {
      const float value = ToFloat(x[(n * l.c + g * l.width) * l.s]);
      group_shift[n * l.groups + g] = value;
      std::fill_n(shift.data() + n * l.c + g * l.width, l.width, value);
    }
  }
  return shift;
}

// Per segment: the sum of d = x - shift and its centred sum of squares.
template <typename T>
void SegmentMoments(const T* x, const float* row_shift, const ChannelsFirstLayout& l,
                    int64_t block, float* sums, float* m2s) {
  ForEachSegment(l, block, [&](int64_t k, int64_t row, int64_t start, int64_t length) {
    const T* values = x + start;
    const float shift = row_shift[row];
    float sum, unused;
    LaneSums(length, [&](int64_t i, float* a, float*) { *a += ToFloat(values[i]) - shift; }, &sum,
             &unused);
    const float mean = sum / static_cast<float>(length);
    LaneSums(
        length,
        [&](int64_t i, float* a, float*) {
          const float centred = (ToFloat(values[i]) - shift) - mean;
          *a += centred * centred;
        },
        &m2s[k], &unused);
    sums[k] = sum;
  });
}

// Merges sample `sample`'s segment moments into its groups' mean of d and
// inverse standard deviation.
inline void ChannelsFirstGroupMoments(const std::vector<float>& sums, const std::vector<float>& m2s,
                                      const ChannelsFirstLayout& l, int64_t sample, float epsilon,
                                      float* delta, float* inv_std) {
  const double count = static_cast<double>(l.GroupCount());
  const int64_t group_segments = l.width * l.segments_per_row;
  for (int64_t g = 0; g < l.groups; ++g) {
    const int64_t first = (sample * l.c + g * l.width) * l.segments_per_row;
    double total = 0.0;
    for (int64_t k = first; k < first + group_segments; ++k) total += sums[k];
    const double mean = total / count;
    double m2 = 0.0;
    for (int64_t k = first; k < first + group_segments; ++k) {
      const double length = static_cast<double>(l.LengthOf(k));
      const double gap = sums[k] / length - mean;  // Chan et al.'s merge
      m2 += m2s[k] + length * gap * gap;
    }
    delta[sample * l.groups + g] = static_cast<float>(mean);
    inv_std[sample * l.groups + g] = static_cast<float>(1.0 / std::sqrt(m2 / count + epsilon));
  }
}

// Per-channel vectors (n * c): shift, centre (mean of d), scale and beta.
struct RowCoefficients {
  const float *shift, *centre, *scale, *beta;
};

// One row's coefficients: its normalized value is ((x - origin) - centre)
// * scale + beta.
struct Row {
  float origin, centre, scale, beta;
};

inline Row RowOf(const RowCoefficients& rows, int64_t row, int64_t channels) {
  return Row{rows.shift[row], rows.centre[row], rows.scale[row], rows.beta[row % channels]};
}

template <typename T, Activation kAct>
void ChannelsFirstWrite(const T* __restrict__ x, const RowCoefficients& rows,
                        const ChannelsFirstLayout& l, int64_t block, T* __restrict__ y) {
  ForEachSegment(l, block, [&](int64_t, int64_t row, int64_t start, int64_t length) {
    const Row r = RowOf(rows, row, l.c);
    for (int64_t i = start; i < start + length; ++i) {
      const float value = Normalized((ToFloat(x[i]) - r.origin) - r.centre, r.scale, r.beta);
      y[i] = FromFloat<T>(Activate<kAct>(value));
    }
  });
}

// Per segment: sum of dy and of dy * (d - mean(d)), dy through the fused
// activation's derivative.
template <typename T, Activation kAct>
void ChannelsFirstGradientSums(const T* __restrict__ x, const T* __restrict__ dy,
                               const RowCoefficients& rows, const ChannelsFirstLayout& l,
                               int64_t block, float* sums, float* centred_sums) {
  ForEachSegment(l, block, [&](int64_t k, int64_t row, int64_t start, int64_t length) {
    const Row r = RowOf(rows, row, l.c);
    const T* xs = x + start;
    const T* dys = dy + start;
    LaneSums(
        length,
        [&](int64_t i, float* sum, float* centred_sum) {
          const float centred = (ToFloat(xs[i]) - r.origin) - r.centre;
          const float g = GatedGradient<kAct>(ToFloat(dys[i]), centred, r.scale, r.beta);
          *sum += g;
          *centred_sum += g * centred;
        },
        &sums[k], &centred_sums[k]);
  });
}

// dx = dy_scale * g - centred_scale * (d - mean(d)) - bias, per row.
template <typename T, Activation kAct>
void ChannelsFirstWriteGradient(const T* __restrict__ x, const T* __restrict__ dy,
                                const RowCoefficients& rows, const float* dy_scale,
                                const float* centred_scale, const float* bias,
                                const ChannelsFirstLayout& l, int64_t block, T* __restrict__ dx) {
  ForEachSegment(l, block, [&](int64_t, int64_t row, int64_t start, int64_t length) {
    const Row r = RowOf(rows, row, l.c);
    const float a = dy_scale[row], b = centred_scale[row], offset = bias[row];
    for (int64_t i = start; i < start + length; ++i) {
      const float centred = (ToFloat(x[i]) - r.origin) - r.centre;
      const float g = GatedGradient<kAct>(ToFloat(dy[i]), centred, r.scale, r.beta);
      dx[i] = FromFloat<T>(a * g - b * centred - offset);
    }
  });
}

// Sample `sample`'s per-channel sums of its segments, then its gradient
// terms (GradientTermsFromSums).
inline void ChannelsFirstGradientTerms(const std::vector<float>& sums,
                                       const std::vector<float>& centred_sums, const float* gamma,
                                       const float* inv_std, const ChannelsFirstLayout& l,
                                       int64_t sample, double* dbeta, double* dgamma,
                                       float* dy_scale, float* centred_scale, float* bias) {
  std::vector<double> sum_dy(l.c, 0.0), sum_dy_centred(l.c, 0.0);
  for (int64_t j = 0; j < l.c; ++j) {
    const int64_t first = (sample * l.c + j) * l.segments_per_row;
    for (int64_t k = first; k < first + l.segments_per_row; ++k) {
      sum_dy[j] += sums[k];
      sum_dy_centred[j] += centred_sums[k];
    }
  }
  GradientTermsFromSums(sum_dy, sum_dy_centred, gamma, inv_std + sample * l.groups, l.groups,
                        l.width, static_cast<double>(l.GroupCount()), dbeta, dgamma, dy_scale,
                        centred_scale, bias);
}

}  // namespace gn_keras

#endif  // GN_KERAS_KERNELS_GROUP_NORM_CHANNELS_FIRST_H_
