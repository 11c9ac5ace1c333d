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
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace gn_keras {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
namespace shape_inference = tensorflow::shape_inference;

template <typename T>
class GroupNormOp : public OpKernel {
 public:
  explicit GroupNormOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("groups", &groups_));
    OP_REQUIRES_OK(context, context->GetAttr("epsilon", &epsilon_));
    std::string activation;
    OP_REQUIRES_OK(context, context->GetAttr("activation", &activation));
    OP_REQUIRES_OK(context, ParseActivation(activation, &activation_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    const Tensor& gamma = context->input(1);
    const Tensor& beta = context->input(2);
    Layout l;
    OP_REQUIRES_OK(context, MakeLayout(x, groups_, &l));
    OP_REQUIRES(context, gamma.NumElements() == l.c && beta.NumElements() == l.c,
                InvalidArgument("gamma and beta must hold ", l.c, " values"));
    Tensor *y, *shift_out, *delta_out, *inv_std_out;
    const TensorShape stats_shape({l.n, l.groups});
    OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &y));
    OP_REQUIRES_OK(context, context->allocate_output(1, stats_shape, &shift_out));
    OP_REQUIRES_OK(context, context->allocate_output(2, stats_shape, &delta_out));
    OP_REQUIRES_OK(context, context->allocate_output(3, stats_shape, &inv_std_out));
    if (x.NumElements() == 0) {  // empty groups: no statistics, as 0/0 would give
      shift_out->flat<float>().setZero();
      delta_out->flat<float>().setConstant(std::nanf(""));
      inv_std_out->flat<float>().setConstant(std::nanf(""));
      return;
    }

    const T* xs = x.flat<T>().data();
    float* group_shift = shift_out->flat<float>().data();
    float* delta = delta_out->flat<float>().data();
    float* inv_std = inv_std_out->flat<float>().data();
    const std::vector<float> shift = ChannelShifts(xs, l, group_shift);

    std::vector<float> sums(l.Blocks() * l.c), m2s(l.Blocks() * l.c);
    // y = (d - mean(d)) * (gamma / sigma) + beta, per channel.
    const float* g = gamma.flat<float>().data();
    const float* b = beta.flat<float>().data();
    std::vector<float> scale(l.n * l.c), centre(l.n * l.c);
    T* ys = y->flat<T>().data();
    auto sweep = [&](int64_t block) {
      const BlockRange r = RangeOf(l, block);
      BlockMoments(xs, shift.data() + r.sample * l.c, l, r, sums.data() + block * l.c,
                   m2s.data() + block * l.c);
    };
    auto finish = [&](int64_t s) {
      GroupMoments(sums, m2s, l, s, epsilon_, delta, inv_std);
      for (int64_t j = 0; j < l.c; ++j) {
        const int64_t group = s * l.groups + j / l.width;
        scale[s * l.c + j] = inv_std[group] * g[j];
        centre[s * l.c + j] = delta[group];
      }
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

 private:
  int64_t groups_;
  float epsilon_;
  Activation activation_;
};


template <typename T>
class GroupNormGradOp : public OpKernel {
 public:
  explicit GroupNormGradOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("groups", &groups_));
    std::string activation;
    OP_REQUIRES_OK(context, context->GetAttr("activation", &activation));
    OP_REQUIRES_OK(context, ParseActivation(activation, &activation_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    const Tensor& dy = context->input(1);
    Layout l;
    OP_REQUIRES_OK(context, MakeLayout(x, groups_, &l));
    OP_REQUIRES(context, dy.shape() == x.shape(),
                InvalidArgument("dy shape ", dy.shape().DebugString(), " != x shape ",
                                x.shape().DebugString()));
    for (int i = 4; i < 7; ++i) {
      OP_REQUIRES(context, context->input(i).NumElements() == l.n * l.groups,
                  InvalidArgument("statistics must have shape [", l.n, ", ", l.groups, "]"));
    }
    OP_REQUIRES(context,
                context->input(2).NumElements() == l.c && context->input(3).NumElements() == l.c,
                InvalidArgument("gamma and beta must hold ", l.c, " values"));
    Tensor *dx_out, *dgamma_out, *dbeta_out;
    OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &dx_out));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({l.c}), &dgamma_out));
    OP_REQUIRES_OK(context, context->allocate_output(2, TensorShape({l.c}), &dbeta_out));
    float* dgamma = dgamma_out->flat<float>().data();
    float* dbeta = dbeta_out->flat<float>().data();
    std::fill_n(dgamma, l.c, 0.0f);
    std::fill_n(dbeta, l.c, 0.0f);
    if (x.NumElements() == 0) return;

    const T* xs = x.flat<T>().data();
    const T* dys = dy.flat<T>().data();
    const float* gamma = context->input(2).flat<float>().data();
    const float* beta = context->input(3).flat<float>().data();
    const float* inv_std = context->input(6).flat<float>().data();
    const std::vector<float> shift = PerChannel(context->input(4).flat<float>().data(), l);
    const std::vector<float> delta = PerChannel(context->input(5).flat<float>().data(), l);
    // The forward's scale (gamma / sigma), for the activation's gradient.
    const bool gated = activation_ != Activation::kNone;
    std::vector<float> scale;
    if (gated) {
      scale = PerChannel(inv_std, l);
      for (int64_t k = 0; k < l.n * l.c; ++k) scale[k] *= gamma[k % l.c];
    }
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
    T* dx = dx_out->flat<T>().data();
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
    for (int64_t j = 0; j < l.c; ++j) {
      double beta_sum = 0.0, gamma_sum = 0.0;
      for (int64_t s = 0; s < l.n; ++s) {
        beta_sum += sample_dbeta[s * l.c + j];
        gamma_sum += sample_dgamma[s * l.c + j];
      }
      dbeta[j] = static_cast<float>(beta_sum);
      dgamma[j] = static_cast<float>(gamma_sum);
    }
  }

 private:
  int64_t groups_;
  Activation activation_;
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
  c->set_output(0, c->input(0));
  shape_inference::ShapeHandle x = c->input(0);
  shape_inference::DimensionHandle channels =
      c->RankKnown(x) ? c->Dim(x, -1) : c->UnknownDim();
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

