#include "engine/trace.h"

#include <algorithm>
#include <charconv>
#include <limits>

#include "formats/error.h"

namespace lockstep::engine {
namespace {

using Range = std::pair<uint32_t, uint32_t>;

std::optional<uint32_t> parse_u32(std::string_view s) {
  uint32_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

[[noreturn]] void bad_item(std::string_view item, const std::string& expected) {
  throw Error("capture plan item \"" + std::string(item) + "\": expected " + expected);
}

}  // namespace

bool Cell::operator<(const Cell& o) const {
  // Whole-model cells sort after every layer.
  uint64_t a = layer ? *layer : std::numeric_limits<uint64_t>::max();
  uint64_t b = o.layer ? *o.layer : std::numeric_limits<uint64_t>::max();
  if (a != b) return a < b;
  return stage < o.stage;
}

std::string cell_name(const Cell& c) {
  std::string s(stage_name(c.stage));
  if (c.layer) s += "@" + std::to_string(*c.layer);
  return s;
}

Cell parse_cell(std::string_view name) {
  const size_t at = name.find('@');
  const std::string_view stage_text = name.substr(0, at);
  const std::optional<Stage> stage = find_stage(stage_text);
  if (!stage || stage_info(*stage).reserved)
    throw Error("cell \"" + std::string(name) + "\": unknown stage \"" + std::string(stage_text) +
                "\"");
  if (!stage_info(*stage).per_layer) {
    if (at != std::string_view::npos)
      throw Error("cell \"" + std::string(name) + "\": " + std::string(stage_text) +
                  " is a whole-model stage and takes no @layer");
    return {*stage, std::nullopt};
  }
  const std::optional<uint32_t> layer =
      at == std::string_view::npos ? std::nullopt : parse_u32(name.substr(at + 1));
  if (!layer)
    throw Error("cell \"" + std::string(name) + "\": expected " + std::string(stage_text) +
                "@LAYER, a layer number");
  return {*stage, layer};
}

uint64_t Tensor::elements() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

CapturePlan CapturePlan::all() {
  CapturePlan p;
  p.add_all();
  return p;
}

void CapturePlan::add_all(std::optional<Range> layers) {
  rules_.push_back({std::nullopt, layers});
}

void CapturePlan::add(Stage stage, std::optional<Range> layers) {
  rules_.push_back({stage, layers});
}

CapturePlan CapturePlan::parse(std::string_view spec) {
  CapturePlan p;
  if (trim(spec).empty()) throw Error("capture plan: expected \"all\" or stage names, found \"\"");
  auto split = [](std::string_view& rest, char sep) {
    size_t at = rest.find(sep);
    std::string_view head = rest.substr(0, at);
    rest = at == std::string_view::npos ? std::string_view() : rest.substr(at + 1);
    return std::pair{head, at != std::string_view::npos};
  };
  for (std::string_view groups = spec;;) {
    auto [group, more_groups] = split(groups, ';');
    group = trim(group);
    std::optional<Range> range;
    if (size_t at = group.rfind('@'); at != std::string_view::npos) {
      std::string_view r = trim(group.substr(at + 1));
      size_t dash = r.find('-');
      auto first = parse_u32(r.substr(0, dash));
      auto last = dash == std::string_view::npos ? first : parse_u32(r.substr(dash + 1));
      if (!first || !last || *last < *first) bad_item(group, "a layer N or range N-M with N <= M");
      range = Range{*first, *last};
      group = group.substr(0, at);
    }
    for (std::string_view names = group;;) {
      auto [raw, more_names] = split(names, ',');
      std::string_view name = trim(raw);
      if (name == "all") {
        p.add_all(range);
      } else {
        auto stage = find_stage(name);
        if (!stage) {
          std::string known = "\"all\"";
          for (const auto& s : kStages)
            if (!s.reserved) known += ", " + std::string(s.name);
          bad_item(name, "a stage name (" + known + ")");
        }
        if (stage_info(*stage).reserved)
          bad_item(name, "a stage Lockstep's plans produce (MoE stages are reserved)");
        // A range restricts per-layer stages; whole-model stages in the group are captured.
        p.add(*stage, stage_info(*stage).per_layer ? range : std::nullopt);
      }
      if (!more_names) break;
    }
    if (!more_groups) break;
  }
  return p;
}

bool CapturePlan::wants(Stage stage, std::optional<uint32_t> layer) const {
  for (const Rule& r : rules_) {
    if (r.stage && *r.stage != stage) continue;
    // A layer range restricts per-layer cells; whole-model cells ignore it.
    if (r.layers && layer && (*layer < r.layers->first || *layer > r.layers->second)) continue;
    return true;
  }
  return false;
}

void Trace::put(const Cell& cell, Tensor t) {
  if (t.elements() != t.data.size())
    throw Error("trace cell " + cell_name(cell) + ": expected " + std::to_string(t.elements()) +
                " values for its shape, found " + std::to_string(t.data.size()));
  cells_[cell] = std::move(t);
}

const Tensor* Trace::find(const Cell& cell) const {
  auto it = cells_.find(cell);
  return it == cells_.end() ? nullptr : &it->second;
}

Trace stitch_steps(std::span<const Trace> steps) {
  if (steps.empty()) throw Error("stitch: no steps to join");
  const Trace& first = steps.front();
  Trace out;
  out.lane = first.lane;
  out.pos = first.pos;
  uint64_t tokens = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    const Trace& s = steps[i];
    if (s.pos != first.pos + tokens)
      throw Error("stitch: step " + std::to_string(i) + " starts at position " +
                  std::to_string(s.pos) + ", expected " + std::to_string(first.pos + tokens) +
                  " (steps must be consecutive)");
    if (s.size() != first.size())
      throw Error("stitch: step " + std::to_string(i) + " holds " + std::to_string(s.size()) +
                  " cells, step 0 holds " + std::to_string(first.size()));
    out.tokens.insert(out.tokens.end(), s.tokens.begin(), s.tokens.end());
    tokens += s.tokens.size();
  }
  const uint64_t ctx = first.pos + tokens;
  for (const auto& [cell, t0] : first.cells()) {
    const std::string name = cell_name(cell);
    Tensor joined;
    const bool attention = t0.shape.size() == 3;
    if (!attention && t0.shape.size() != 2)
      throw Error("stitch: cell " + name + " has " + std::to_string(t0.shape.size()) +
                  " dimensions, expected [tokens, width] or [heads, tokens, ctx]");
    const uint64_t heads = attention ? t0.shape[0] : 1, width = t0.shape.back();
    joined.shape = attention ? std::vector<uint64_t>{heads, tokens, ctx}
                             : std::vector<uint64_t>{tokens, width};
    const float fill = cell.stage == Stage::AttnScores ? -std::numeric_limits<float>::infinity()
                                                       : 0.0f;
    joined.data.assign(joined.elements(), fill);
    uint64_t row = 0;  // the first token of the step within the joined tensor
    for (size_t i = 0; i < steps.size(); ++i) {
      const Tensor* t = steps[i].find(cell);
      const uint64_t n = steps[i].tokens.size();
      const uint64_t step_ctx = steps[i].pos + n;
      const std::vector<uint64_t> want =
          attention ? std::vector<uint64_t>{heads, n, step_ctx} : std::vector<uint64_t>{n, width};
      if (!t || t->shape != want)
        throw Error("stitch: step " + std::to_string(i) + "'s " + name +
                    (t ? " has another shape than its tokens and step 0 imply" : " is missing"));
      for (uint64_t h = 0; h < heads; ++h)
        for (uint64_t r = 0; r < n; ++r) {
          const float* src = t->data.data() + (h * n + r) * (attention ? step_ctx : width);
          float* dst = joined.data.data() + (h * tokens + row + r) * (attention ? ctx : width);
          std::copy_n(src, attention ? step_ctx : width, dst);
        }
      row += n;
    }
    out.put(cell, std::move(joined));
  }
  return out;
}

}  // namespace lockstep::engine
