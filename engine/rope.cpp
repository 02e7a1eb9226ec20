#include "engine/rope.h"

#include <cmath>
#include <numbers>
#include <string>

#include "formats/error.h"
#include "formats/ggml_codec.h"

namespace lockstep::engine {

std::vector<double> rope_inv_freq(const ModelConfig& c, const Weights& weights) {
  const uint64_t pairs = c.rope_dims / 2;
  std::vector<double> inv_freq(pairs);
  for (uint64_t i = 0; i < pairs; ++i)
    inv_freq[i] =
        std::pow(c.rope_base, -2.0 * static_cast<double>(i) / static_cast<double>(c.rope_dims));
  if (c.rope_scaling) {
    const RopeScalingConfig& s = *c.rope_scaling;
    if (s.type == "linear") {
      for (double& f : inv_freq) f /= s.factor;
    } else if (s.type == "llama3") {
      // HF's _compute_llama3_parameters: long wavelengths slowed by factor, short kept, and a
      // smooth blend in between.
      double orig = static_cast<double>(s.original_context.value_or(8192));
      double low = s.low_freq_factor.value_or(1.0), high = s.high_freq_factor.value_or(4.0);
      double low_wavelen = orig / low, high_wavelen = orig / high;
      for (double& f : inv_freq) {
        double wavelen = 2.0 * std::numbers::pi / f;
        if (wavelen > low_wavelen) {
          f /= s.factor;
        } else if (wavelen >= high_wavelen) {
          double smooth = (orig / wavelen - low) / (high - low);
          f = (1.0 - smooth) * f / s.factor + smooth * f;
        }
      }
    } else {
      throw Error(c.source + ": Lockstep computes RoPE scaling \"linear\" and \"llama3\", not \"" +
                  s.type + "\"");
    }
  }
  if (c.rope_freq_factors) {
    const TensorRef* t = weights.find(WeightRole::RopeFreqs);
    if (!t) throw Error(c.source + ": rope_freqs is not bound");
    if (t->elements() != pairs)
      throw Error(c.source + ": rope_freqs: expected " + std::to_string(pairs) +
                  " values, found " + std::to_string(t->elements()));
    std::vector<float> ff(pairs);
    formats::dequantize(t->type, t->data, ff);
    for (uint64_t i = 0; i < pairs; ++i) inv_freq[i] /= static_cast<double>(ff[i]);
  }
  return inv_freq;
}

}  // namespace lockstep::engine
