#include "engine/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace lockstep::engine {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Calls f(test, ref) for every position finite in both; returns false when one side is -inf
// (masked) and the other not, or either holds NaN or +inf.
template <typename F>
bool for_each_pair(std::span<const float> test, std::span<const float> ref, bool& nan, F f) {
  nan = false;
  if (test.size() != ref.size()) return false;
  for (size_t i = 0; i < ref.size(); ++i) {
    const float t = test[i], r = ref[i];
    if (std::isnan(t) || std::isnan(r)) {
      nan = true;
      return false;
    }
    const bool tm = std::isinf(t), rm = std::isinf(r);
    if (tm || rm) {
      if (t == r && t < 0) continue;  // masked in both
      return false;
    }
    f(static_cast<double>(t), static_cast<double>(r));
  }
  return true;
}

std::vector<double> softmax(std::span<const float> logits) {
  double mx = -kInf;
  for (float v : logits) mx = std::max(mx, static_cast<double>(v));
  std::vector<double> p(logits.size());
  double sum = 0.0;
  for (size_t i = 0; i < p.size(); ++i) sum += p[i] = std::exp(logits[i] - mx);
  for (double& v : p) v /= sum;
  return p;
}

}  // namespace

double relative_rms(std::span<const float> test, std::span<const float> ref) {
  double diff = 0.0, norm = 0.0;
  bool nan = false;
  if (!for_each_pair(test, ref, nan, [&](double t, double r) {
        diff += (t - r) * (t - r);
        norm += r * r;
      }))
    return nan ? kNaN : kInf;
  if (diff == 0.0) return 0.0;
  return norm == 0.0 ? kInf : std::sqrt(diff / norm);
}

double max_relative_error(std::span<const float> test, std::span<const float> ref) {
  double diff = 0.0, norm = 0.0;
  bool nan = false;
  if (!for_each_pair(test, ref, nan, [&](double t, double r) {
        diff = std::max(diff, std::abs(t - r));
        norm = std::max(norm, std::abs(r));
      }))
    return nan ? kNaN : kInf;
  if (diff == 0.0) return 0.0;
  return norm == 0.0 ? kInf : diff / norm;
}

double kl_divergence(std::span<const float> ref_logits, std::span<const float> test_logits) {
  if (ref_logits.size() != test_logits.size()) return kNaN;
  std::vector<double> p = softmax(ref_logits), q = softmax(test_logits);
  double kl = 0.0;
  for (size_t i = 0; i < p.size(); ++i)
    if (p[i] > 0) kl += p[i] * (std::log(p[i]) - std::log(q[i]));
  return kl;
}

}  // namespace lockstep::engine
