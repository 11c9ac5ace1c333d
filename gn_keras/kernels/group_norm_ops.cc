// Fused CPU kernels for Group Normalization of a channels-last tensor.
//
// Optional: gn_keras/kernels/__init__.py compiles this file against the
// installed TensorFlow on first use, and gn_keras/tf_fast.py falls back to
// plain TensorFlow ops when it cannot.  The math is that of tf_fast.py's
// reference ops (the paper's Eqns. 1, 2, 6 and the closed-form gradient):
//
// * x is viewed as (N, A, C), C the last (channel) axis and A every axis in
//   between; group g holds channels [g*W, (g+1)*W), W = C / G.
// * Every group is shifted by its first element s (x[n, 0, g*W]), so a
//   constant group has d = x - s = 0 exactly and normalizes to beta.
// * Statistics are float32 (double when combining partial sums).  The
//   variance is two-pass within each block of rows, where the block is
//   still in cache, and blocks are merged with Chan's pairwise formula, so
//   the tensor is read from memory once for the statistics.
// * The forward writes y = (d - mean(d)) * scale + beta (scale = gamma /
//   sigma), centring inside the pass as the keras.ops reference does; the
//   backward reads x and dy once for its two per-channel sums and once more
//   to write dx.
// * With activation="relu" the forward writes max(y, 0) and the backward
//   gates dy by y > 0; with activation="silu" it writes y * sigmoid(y) and
//   takes dy through its derivative s * (1 + y * (1 - s)), s = sigmoid(y).
//   Both recompute y from x in the passes the backward makes anyway: a
//   GN + activation pair costs about what GN alone costs, two memory passes
//   fewer than a separate activation and its gradient.
//
// Work is split into blocks of rows of one sample, run on TensorFlow's
// intra-op thread pool (RunPhases in group_norm_blocks.h decides whether
// threads take whole samples or share every pass).

#include "group_norm_blocks.h"
#include "group_norm_channels_first.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace gn_keras {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
namespace shape_inference = tensorflow::shape_inference;

// Checks and allocates the forward's outputs.  `*work` is false for an
// empty tensor, whose statistics are then NaN, as 0/0 would give.
inline tensorflow::Status AllocateForward(OpKernelContext* context, const Tensor& x, int64_t n,
                                          int64_t c, int64_t groups, Tensor** outputs,
                                          bool* work) {
  if (context->input(1).NumElements() != c || context->input(2).NumElements() != c) {
    return InvalidArgument("gamma and beta must hold ", c, " values");
  }
  const TensorShape stats_shape({n, groups});
  TF_RETURN_IF_ERROR(context->allocate_output(0, x.shape(), &outputs[0]));
  for (int i = 1; i < 4; ++i) {
    TF_RETURN_IF_ERROR(context->allocate_output(i, stats_shape, &outputs[i]));
  }
  *work = x.NumElements() != 0;
  if (!*work) {
    outputs[1]->flat<float>().setZero();
    outputs[2]->flat<float>().setConstant(std::nanf(""));
    outputs[3]->flat<float>().setConstant(std::nanf(""));
  }
  return tensorflow::OkStatus();
}

// Sample s's per-channel scale (gamma / sigma) and centre (mean of d).
inline void OutputCoefficients(const float* delta, const float* inv_std, const float* gamma,
                               int64_t s, int64_t c, int64_t groups, int64_t width, float* scale,
                               float* centre) {
  for (int64_t j = 0; j < c; ++j) {
    const int64_t group = s * groups + j / width;
    scale[s * c + j] = inv_std[group] * gamma[j];
    centre[s * c + j] = delta[group];
  }
}

template <typename T>
class GroupNormOp : public OpKernel {
 public:
  explicit GroupNormOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("groups", &groups_));
    OP_REQUIRES_OK(context, context->GetAttr("epsilon", &epsilon_));
    std::string activation, data_format;
    OP_REQUIRES_OK(context, context->GetAttr("activation", &activation));
    OP_REQUIRES_OK(context, ParseActivation(activation, &activation_));
    OP_REQUIRES_OK(context, context->GetAttr("data_format", &data_format));
    channels_first_ = data_format == "channels_first";
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    Tensor* outputs[4];
    bool work = false;
    if (channels_first_) {
      ChannelsFirstLayout l;
      OP_REQUIRES_OK(context, MakeChannelsFirstLayout(x, groups_, &l));
      OP_REQUIRES_OK(context, AllocateForward(context, x, l.n, l.c, l.groups, outputs, &work));
      if (work) ComputeChannelsFirst(context, x, l, outputs);
      return;
    }
    Layout l;
    OP_REQUIRES_OK(context, MakeLayout(x, groups_, &l));
    OP_REQUIRES_OK(context, AllocateForward(context, x, l.n, l.c, l.groups, outputs, &work));
    if (work) ComputeChannelsLast(context, x, l, outputs);
  }

 private:
  void ComputeChannelsLast(OpKernelContext* context, const Tensor& x, const Layout& l,
                           Tensor** outputs) {
    const T* xs = x.flat<T>().data();
    float* group_shift = outputs[1]->flat<float>().data();
    float* delta = outputs[2]->flat<float>().data();
    float* inv_std = outputs[3]->flat<float>().data();
    const std::vector<float> shift = ChannelShifts(xs, l, group_shift);

    std::vector<float> sums(l.Blocks() * l.c), m2s(l.Blocks() * l.c);
    // y = (d - mean(d)) * (gamma / sigma) + beta, per channel.
    const float* g = context->input(1).flat<float>().data();
    const float* b = context->input(2).flat<float>().data();
    std::vector<float> scale(l.n * l.c), centre(l.n * l.c);
    T* ys = outputs[0]->flat<T>().data();
    auto sweep = [&](int64_t block) {
      const BlockRange r = RangeOf(l, block);
      BlockMoments(xs, shift.data() + r.sample * l.c, l, r, sums.data() + block * l.c,
                   m2s.data() + block * l.c);
    };
    auto finish = [&](int64_t s) {
      GroupMoments(sums, m2s, l, s, epsilon_, delta, inv_std);
      OutputCoefficients(delta, inv_std, g, s, l.c, l.groups, l.width, scale.data(), centre.data());
    };
    auto write = [&](int64_t block) {
      const BlockRange r = RangeOf(l, block);
      const int64_t at = r.sample * l.c;
      WithActivation(activation_, [&](auto kind) {
        WriteNormalized<T, decltype(kind)::value>(xs, shift.data() + at, centre.data() + at,
                                                  scale.data() + at, b, l, r, ys);
      });
    };
    RunPhases(context, l, 5, sweep, finish, write);
  }

  void ComputeChannelsFirst(OpKernelContext* context, const Tensor& x,
                            const ChannelsFirstLayout& l, Tensor** outputs) {
    const T* xs = x.flat<T>().data();
    float* delta = outputs[2]->flat<float>().data();
    float* inv_std = outputs[3]->flat<float>().data();
    const std::vector<float> shift =
        ChannelsFirstShifts(xs, l, outputs[1]->flat<float>().data());
    const float* g = context->input(1).flat<float>().data();
    const std::vector<int64_t>::size_type segments = l.n * l.SegmentsPerSample();
    std::vector<float> sums(segments), m2s(segments), scale(l.n * l.c), centre(l.n * l.c);
    const RowCoefficients rows{shift.data(), centre.data(), scale.data(),
                               context->input(2).flat<float>().data()};
    T* ys = outputs[0]->flat<T>().data();
    auto sweep = [&](int64_t block) {
      SegmentMoments(xs, shift.data(), l, block, sums.data(), m2s.data());
    };
    auto finish = [&](int64_t s) {
      ChannelsFirstGroupMoments(sums, m2s, l, s, epsilon_, delta, inv_std);
      OutputCoefficients(delta, inv_std, g, s, l.c, l.groups, l.width, scale.data(), centre.data());
    };
    auto write = [&](int64_t block) {
      WithActivation(activation_, [&](auto kind) {
        ChannelsFirstWrite<T, decltype(kind)::value>(xs, rows, l, block, ys);
      });
    };
    RunPhases(context, l, 5, sweep, finish, write);
  }

  int64_t groups_;
  float epsilon_;
  Activation activation_;
  bool channels_first_;
};

// Checks the backward's inputs and allocates its outputs, dgamma and dbeta
// zeroed.  `*work` is false for an empty tensor.
inline tensorflow::Status AllocateBackward(OpKernelContext* context, const Tensor& x, int64_t n,
                                           int64_t c, int64_t groups, Tensor** outputs,
                                           bool* work) {
  const Tensor& dy = context->input(1);
  if (dy.shape() != x.shape()) {
    return InvalidArgument("dy shape ", dy.shape().DebugString(), " != x shape ",
                           x.shape().DebugString());
  }
  for (int i = 4; i < 7; ++i) {
    if (context->input(i).NumElements() != n * groups) {
      return InvalidArgument("statistics must have shape [", n, ", ", groups, "]");
    }
  }
  if (context->input(2).NumElements() != c || context->input(3).NumElements() != c) {
    return InvalidArgument("gamma and beta must hold ", c, " values");
  }
  TF_RETURN_IF_ERROR(context->allocate_output(0, x.shape(), &outputs[0]));
  TF_RETURN_IF_ERROR(context->allocate_output(1, TensorShape({c}), &outputs[1]));
  TF_RETURN_IF_ERROR(context->allocate_output(2, TensorShape({c}), &outputs[2]));
  outputs[1]->flat<float>().setZero();
  outputs[2]->flat<float>().setZero();
  *work = x.NumElements() != 0;
  return tensorflow::OkStatus();
}

// dbeta and dgamma: the samples' contributions added in a fixed order.
inline void AddOverSamples(const std::vector<double>& sample_dbeta,
                           const std::vector<double>& sample_dgamma, int64_t n, int64_t c,
                           Tensor** outputs) {
  float* dgamma = outputs[1]->flat<float>().data();
  float* dbeta = outputs[2]->flat<float>().data();
  for (int64_t j = 0; j < c; ++j) {
    double beta_sum = 0.0, gamma_sum = 0.0;
    for (int64_t s = 0; s < n; ++s) {
      beta_sum += sample_dbeta[s * c + j];
      gamma_sum += sample_dgamma[s * c + j];
    }
    dbeta[j] = static_cast<float>(beta_sum);
    dgamma[j] = static_cast<float>(gamma_sum);
  }
}

template <typename T>
class GroupNormGradOp : public OpKernel {
 public:
  explicit GroupNormGradOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("groups", &groups_));
    std::string activation, data_format;
    OP_REQUIRES_OK(context, context->GetAttr("activation", &activation));
    OP_REQUIRES_OK(context, ParseActivation(activation, &activation_));
    OP_REQUIRES_OK(context, context->GetAttr("data_format", &data_format));
    channels_first_ = data_format == "channels_first";
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    Tensor* outputs[3];
    bool work = false;
    if (channels_first_) {
      ChannelsFirstLayout l;
      OP_REQUIRES_OK(context, MakeChannelsFirstLayout(x, groups_, &l));
      OP_REQUIRES_OK(context, AllocateBackward(context, x, l.n, l.c, l.groups, outputs, &work));
      if (work) ComputeChannelsFirst(context, x, l, outputs);
      return;
    }
    Layout l;
    OP_REQUIRES_OK(context, MakeLayout(x, groups_, &l));
    OP_REQUIRES_OK(context, AllocateBackward(context, x, l.n, l.c, l.groups, outputs, &work));
    if (work) ComputeChannelsLast(context, x, l, outputs);
  }

 private:
  // The forward's per-(sample, channel) scale (gamma / sigma), for the
  // activation's gradient.
  std::vector<float> ForwardScale(const float* gamma, const float* inv_std, int64_t n, int64_t c,
                                  int64_t width) {
    std::vector<float> scale(n * c);
    for (int64_t k = 0; k < n * c; ++k) scale[k] = inv_std[k / width] * gamma[k % c];
    return scale;
  }

  void ComputeChannelsLast(OpKernelContext* context, const Tensor& x, const Layout& l,
                           Tensor** outputs) {
    const T* xs = x.flat<T>().data();
    const T* dys = context->input(1).flat<T>().data();
    const float* gamma = context->input(2).flat<float>().data();
    const float* beta = context->input(3).flat<float>().data();
    const float* inv_std = context->input(6).flat<float>().data();
    const std::vector<float> shift = PerChannel(context->input(4).flat<float>().data(), l);
    const std::vector<float> delta = PerChannel(context->input(5).flat<float>().data(), l);
    const bool gated = activation_ != Activation::kNone;
    std::vector<float> scale;
    if (gated) scale = ForwardScale(gamma, inv_std, l.n, l.c, l.width);
    auto gate_of = [&](int64_t at) {
      return gated ? ActivationGate{scale.data() + at, beta} : ActivationGate{nullptr, nullptr};
    };

    std::vector<float> sums(l.Blocks() * l.c), centred_sums(l.Blocks() * l.c);
    auto sweep = [&](int64_t block) {
      const BlockRange r = RangeOf(l, block);
      const int64_t at = r.sample * l.c;
      float* sum = sums.data() + block * l.c;
      float* centred_sum = centred_sums.data() + block * l.c;
      WithActivation(activation_, [&](auto kind) {
        BlockGradientSums<T, decltype(kind)::value>(xs, dys, shift.data() + at, delta.data() + at,
                                                    gate_of(at), l, r, sum, centred_sum);
      });
    };
    // Per sample and channel: the contributions to dbeta = sum dy and
    // dgamma = sum dy * xhat, added over samples at the end in a fixed order.
    std::vector<double> sample_dbeta(l.n * l.c), sample_dgamma(l.n * l.c);
    std::vector<float> dy_scale(l.n * l.c), centred_scale(l.n * l.c), bias(l.n * l.c);
    auto finish = [&](int64_t s) {
      InputGradientTerms(sums, centred_sums, gamma, inv_std, l, s, sample_dbeta.data() + s * l.c,
                         sample_dgamma.data() + s * l.c, dy_scale.data() + s * l.c,
                         centred_scale.data() + s * l.c, bias.data() + s * l.c);
    };
    T* dx = outputs[0]->flat<T>().data();
    auto write = [&](int64_t block) {
      const BlockRange r = RangeOf(l, block);
      const int64_t at = r.sample * l.c;
      WithActivation(activation_, [&](auto kind) {
        WriteInputGradient<T, decltype(kind)::value>(
            xs, dys, shift.data() + at, delta.data() + at, gate_of(at), dy_scale.data() + at,
            centred_scale.data() + at, bias.data() + at, l, r, dx);
      });
    };
    RunPhases(context, l, 8, sweep, finish, write);
    AddOverSamples(sample_dbeta, sample_dgamma, l.n, l.c, outputs);
  }

  void ComputeChannelsFirst(OpKernelContext* context, const Tensor& x,
                            const ChannelsFirstLayout& l, Tensor** outputs) {
    const T* xs = x.flat<T>().data();
    const T* dys = context->input(1).flat<T>().data();
    const float* gamma = context->input(2).flat<float>().data();
    const float* inv_std = context->input(6).flat<float>().data();
    Layout groups_only;  // PerChannel needs n, c, groups and width only
    groups_only.n = l.n, groups_only.c = l.c, groups_only.groups = l.groups;
    groups_only.width = l.width;
    const std::vector<float> shift = PerChannel(context->input(4).flat<float>().data(), groups_only);
    const std::vector<float> centre = PerChannel(context->input(5).flat<float>().data(), groups_only);
    const std::vector<float> scale = ForwardScale(gamma, inv_std, l.n, l.c, l.width);
    const RowCoefficients rows{shift.data(), centre.data(), scale.data(),
                               context->input(3).flat<float>().data()};
    const std::vector<int64_t>::size_type segments = l.n * l.SegmentsPerSample();
    std::vector<float> sums(segments), centred_sums(segments);
    auto sweep = [&](int64_t block) {
      WithActivation(activation_, [&](auto kind) {
        ChannelsFirstGradientSums<T, decltype(kind)::value>(xs, dys, rows, l, block, sums.data(),
                                                            centred_sums.data());
      });
    };
    std::vector<double> sample_dbeta(l.n * l.c), sample_dgamma(l.n * l.c);
    std::vector<float> dy_scale(l.n * l.c), centred_scale(l.n * l.c), bias(l.n * l.c);
    auto finish = [&](int64_t s) {
      const int64_t at = s * l.c;
      ChannelsFirstGradientTerms(sums, centred_sums, gamma, inv_std, l, s,
                                 sample_dbeta.data() + at, sample_dgamma.data() + at,
                                 dy_scale.data() + at, centred_scale.data() + at, bias.data() + at);
    };
    T* dx = outputs[0]->flat<T>().data();
    auto write = [&](int64_t block) {
      WithActivation(activation_, [&](auto kind) {
        ChannelsFirstWriteGradient<T, decltype(kind)::value>(
            xs, dys, rows, dy_scale.data(), centred_scale.data(), bias.data(), l, block, dx);
      });
    };
    RunPhases(context, l, 8, sweep, finish, write);
    AddOverSamples(sample_dbeta, sample_dgamma, l.n, l.c, outputs);
  }

  int64_t groups_;
  Activation activation_;
  bool channels_first_;
};

// ---- registration ------------------------------------------------------------

tensorflow::Status ForwardShape(shape_inference::InferenceContext* c) {
  int64_t groups;
  TF_RETURN_IF_ERROR(c->GetAttr("groups", &groups));
  shape_inference::ShapeHandle x = c->input(0);
  c->set_output(0, x);
  shape_inference::DimensionHandle n =
      c->RankKnown(x) ? c->Dim(x, 0) : c->UnknownDim();
  for (int i = 1; i < 4; ++i) c->set_output(i, c->Matrix(n, groups));
  return tensorflow::OkStatus();
}

tensorflow::Status BackwardShape(shape_inference::InferenceContext* c) {
  std::string data_format;
  TF_RETURN_IF_ERROR(c->GetAttr("data_format", &data_format));
  c->set_output(0, c->input(0));
  shape_inference::ShapeHandle x = c->input(0);
  shape_inference::DimensionHandle channels =
      c->RankKnown(x) ? c->Dim(x, data_format == "channels_first" ? 1 : -1) : c->UnknownDim();
  c->set_output(1, c->Vector(channels));
  c->set_output(2, c->Vector(channels));
  return tensorflow::OkStatus();
}

REGISTER_OP("GnKerasGroupNorm")
    .Input("x: T")
    .Input("gamma: float")
    .Input("beta: float")
    .Output("y: T")
    .Output("shift: float")
    .Output("delta: float")
    .Output("inv_std: float")
    .Attr("T: {half, bfloat16, float}")
    .Attr("groups: int >= 1")
    .Attr("epsilon: float")
    .Attr("activation: {'none', 'relu', 'silu'} = 'none'")
    .Attr("data_format: {'channels_last', 'channels_first'} = 'channels_last'")
    .SetShapeFn(ForwardShape);

REGISTER_OP("GnKerasGroupNormGrad")
    .Input("x: T")
    .Input("dy: T")
    .Input("gamma: float")
    .Input("beta: float")
    .Input("shift: float")
    .Input("delta: float")
    .Input("inv_std: float")
    .Output("dx: T")
    .Output("dgamma: float")
    .Output("dbeta: float")
    .Attr("T: {half, bfloat16, float}")
    .Attr("groups: int >= 1")
    .Attr("activation: {'none', 'relu', 'silu'} = 'none'")
    .Attr("data_format: {'channels_last', 'channels_first'} = 'channels_last'")
    .SetShapeFn(BackwardShape);

#define GN_KERAS_REGISTER(T)                                                              \
  REGISTER_KERNEL_BUILDER(                                                                \
      Name("GnKerasGroupNorm").Device(DEVICE_CPU).TypeConstraint<T>("T"), GroupNormOp<T>); \
  REGISTER_KERNEL_BUILDER(                                                                \
      Name("GnKerasGroupNormGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),             \
      GroupNormGradOp<T>);

GN_KERAS_REGISTER(float)
GN_KERAS_REGISTER(Eigen::half)
GN_KERAS_REGISTER(Eigen::bfloat16)

}  // namespace gn_keras

