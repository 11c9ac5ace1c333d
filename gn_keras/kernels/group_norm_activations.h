// The activations the fused kernels apply to their output (ReLU, SiLU),
// their derivative's building blocks, and the dispatch that compiles each
// sweep once per activation.  Included by group_norm_blocks.h.

#ifndef GN_KERAS_KERNELS_GROUP_NORM_ACTIVATIONS_H_
#define GN_KERAS_KERNELS_GROUP_NORM_ACTIVATIONS_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "tensorflow/core/framework/op_kernel.h"

namespace gn_keras {

enum class Activation { kNone, kRelu, kSilu };

inline tensorflow::Status ParseActivation(const std::string& name, Activation* out) {
  if (name == "none") {
    *out = Activation::kNone;
  } else if (name == "relu") {
    *out = Activation::kRelu;
  } else if (name == "silu") {
    *out = Activation::kSilu;
  } else {
    return tensorflow::errors::InvalidArgument("unknown activation '", name, "'");
  }
  return tensorflow::OkStatus();
}

// Calls fn with the activation as a compile-time constant, so that each
// sweep's inner loop is compiled (and vectorized) for one activation.
template <typename Fn>
void WithActivation(Activation activation, Fn fn) {
  using K = Activation;
  switch (activation) {
    case K::kRelu:
      fn(std::integral_constant<K, K::kRelu>());
      break;
    case K::kSilu:
      fn(std::integral_constant<K, K::kSilu>());
      break;
    default:
      fn(std::integral_constant<K, K::kNone>());
  }
}

// 1 / (1 + e^-v) without a library call, so that the loops that use it are
// vectorized: e = e^-|v| = 2^n * e^r with n = round(-|v| / ln 2) and
// |r| <= ln(2)/2, e^r by its degree-6 Taylor polynomial, 2^n assembled in
// the exponent bits; then 1 / (1 + e) for v >= 0 and e / (1 + e) below,
// so neither side cancels.  Relative error below 3e-7 for v > -87; below
// that (where the true value is under 1e-38) n is held at -126.  There is
// no float clamp: GCC turns one into branches and stops vectorizing.  A NaN
// stays NaN.
inline float Sigmoid(float v) {
  const float t = -std::fabs(v);
  const float n = (t * 1.44269504f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (t - n * 0.693145752f) - n * 1.42860677e-6f;    // ln 2 in two parts
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t k = static_cast<int32_t>(n);
  k = k < -126 ? -126 : k;
  const int32_t bits = (k + 127) << 23;
  float two_k;
  std::memcpy(&two_k, &bits, sizeof(two_k));
  const float e = p * two_k;
  return (v >= 0.0f ? 1.0f : e) / (1.0f + e);
}

template <Activation kAct>
inline float Activate(float v) {
  if (kAct == Activation::kRelu) return std::max(v, 0.0f);
  if (kAct == Activation::kSilu) return v * Sigmoid(v);
  return v;
}

}  // namespace gn_keras

#endif  // GN_KERAS_KERNELS_GROUP_NORM_ACTIVATIONS_H_
