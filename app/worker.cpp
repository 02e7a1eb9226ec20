#include "app/worker.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <map>
#include <optional>
#include <utility>

#include "app/demo_model.h"
#include "app/gui_dumps_jobs.h"
#include "app/gui_settings.h"
#include "app/lanes.h"
#include "app/model_info.h"
#include "app/model_input.h"
#include "app/plot_data.h"
#include "app/worker_priority.h"
#include "engine/bisect_run.h"
#include "engine/diagnose.h"
#include "engine/family.h"
#include "engine/faults.h"
#include "engine/trace_io.h"
#include "engine/weights.h"
#include "formats/error.h"

namespace lockstep::app {

using views::CellDetail;
using views::JobKind;
using views::LogEntry;
using views::MapCell;
using views::MapData;
using views::Snapshot;

struct Worker::State {
  std::optional<engine::Model> model;
  std::filesystem::path model_path;
  std::vector<int32_t> tokens;
  std::unique_ptr<engine::Lane> lane_a, lane_b;
  std::optional<engine::BisectResult> result;
  engine::Trace trace_a, trace_b;  // full captures of the bisected run, for the drill-down
  std::string fault;
  std::map<engine::Cell, engine::ReplayVerdict> replays;  // replayed on request
  std::map<engine::Cell, engine::Diagnosis> replay_diagnoses;
  std::shared_ptr<const MapData> map;
  bool user_model = false;  // `model` was opened by the user (else it is the demo, or none)
  std::optional<engine::ModelConfig> run_config;  // the result's model, when known
  std::vector<std::string> recent;                // recent models, most recent first
};

namespace {

constexpr size_t kTopElements = 32;

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string clock_text() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[16];
  std::strftime(buf, sizeof buf, "%H:%M:%S", &tm);
  return buf;
}

std::string fmt(const char* f, double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}
std::string sci(double v) {
  return fmt("%.2e", v);
}
std::string count(uint64_t v) {
  return std::to_string(v);
}

// Heat 0..1 of log10(v) over [lo, hi] decades.
float log_heat(double v, double lo, double hi) {
  if (std::isnan(v) || std::isinf(v)) return 1.0f;
  if (v <= 0) return 0.0f;
  return static_cast<float>(std::clamp((std::log10(v) - lo) / (hi - lo), 0.0, 1.0));
}

float heat(engine::MapMetric m, double v) {
  switch (m) {
    case engine::MapMetric::RelativeRms:
      return log_heat(v, -8, 0);
    case engine::MapMetric::Local:
      return std::isnan(v) ? -1.0f : log_heat(v, -8, 0);
    case engine::MapMetric::MaxAbsDiff:
      return log_heat(v, -7, 1);
    case engine::MapMetric::Cosine:
      if (std::isnan(v)) return 1.0f;
      return v <= 0 ? 1.0f : log_heat(1.0 - v, -10, 0);
    case engine::MapMetric::SqnrDb:
      if (std::isnan(v)) return 1.0f;
      if (std::isinf(v)) return v > 0 ? 0.0f : 1.0f;
      return static_cast<float>(std::clamp((140.0 - v) / 140.0, 0.0, 1.0));
    case engine::MapMetric::NonFinite:
      return v > 0 ? 1.0f : 0.0f;
  }
  return -1.0f;
}

std::string cell_text(engine::MapMetric m, double v) {
  switch (m) {
    case engine::MapMetric::Cosine:
      return fmt("%.4f", v);
    case engine::MapMetric::SqnrDb:
      return fmt("%.0f dB", v);
    case engine::MapMetric::NonFinite:
      return fmt("%.0f", v);
    default:
      return std::isnan(v) && m == engine::MapMetric::Local ? "n/a" : fmt("%.1e", v);
  }
}

const std::array<std::string, views::kMetricCount> kLegendLow = {"1e-8",   "1 - 1e-10", "1e-7",
                                                                 "140 dB", "1e-8",      "0"};
const std::array<std::string, views::kMetricCount> kLegendHigh = {">= 1",    "<= 0", ">= 10",
                                                                  "<= 0 dB", ">= 1", "> 0"};

std::optional<engine::ReplayVerdict> localized(const engine::BisectResult& r,
                                               const engine::Cell& c) {
  if (r.localization)
    for (const auto& v : r.localization->replays)
      if (v.cell == c) return v;
  for (const auto& v : r.requested)
    if (v.cell == c) return v;
  return std::nullopt;
}

// `keep`: the cells the map shows (the run's stage and layer choice); others show "—", and a
// stage none of whose cells is kept has no column.
std::shared_ptr<const MapData> build_map(const engine::BisectResult& r,
                                         const std::function<bool(const engine::Cell&)>& keep) {
  auto map = std::make_shared<MapData>();
  // Columns: per-layer stages any cell has, in table (plan) order, then whole-model stages.
  std::vector<engine::Stage> per_layer, whole;
  uint32_t layers = 0;
  for (const auto& d : r.scan.cells) {
    auto& list = d.cell.layer ? per_layer : whole;
    if (d.cell.layer) layers = std::max(layers, *d.cell.layer + 1);
    if (!keep(d.cell)) continue;
    if (std::find(list.begin(), list.end(), d.cell.stage) == list.end())
      list.push_back(d.cell.stage);
  }
  std::sort(per_layer.begin(), per_layer.end());
  std::sort(whole.begin(), whole.end());
  std::vector<engine::Stage> columns = per_layer;
  columns.insert(columns.end(), whole.begin(), whole.end());
  for (engine::Stage s : columns) map->columns.emplace_back(engine::stage_name(s));
  for (uint32_t l = 0; l < layers; ++l) map->rows.push_back("layer " + std::to_string(l));
  if (!whole.empty()) map->rows.push_back("model");
  map->cells.resize(map->rows.size() * columns.size());
  for (auto& c : map->cells) c.heat.fill(-1.0f);

  for (size_t i = 0; i < r.scan.cells.size(); ++i) {
    const engine::CellDivergence& d = r.scan.cells[i];
    if (!keep(d.cell)) continue;
    const size_t col = static_cast<size_t>(std::find(columns.begin(), columns.end(), d.cell.stage) -
                                           columns.begin());
    const size_t row = d.cell.layer ? *d.cell.layer : map->rows.size() - 1;
    const size_t at = row * columns.size() + col;
    MapCell& m = map->cells[at];
    m.present = true;
    m.cell = d.cell;
    m.name = engine::cell_name(d.cell);
    m.diverges = d.diverges;
    m.first = r.scan.first && *r.scan.first == i;
    for (size_t k = 0; k < views::kMetricCount; ++k) {
      const double v = engine::map_value(r, d, views::kMetrics[k]);
      m.text[k] = cell_text(views::kMetrics[k], v);
      m.heat[k] = heat(views::kMetrics[k], v);
    }
    std::string t = m.name + (m.first ? "  (first divergence)" : d.diverges ? "  (diverges)" : "");
    t += "\nrelative RMS " + sci(d.rel_rms) + "  (floor " + sci(d.floor) + ", threshold " +
         sci(d.threshold) + ")";
    if (const engine::CellComparison* c = r.comparison.find(d.cell)) {
      t += "\ncosine " + fmt("%.6f", c->cosine) + "   SQNR " + fmt("%.1f dB", c->sqnr_db);
      t += "\nmax |diff| " + sci(c->max_abs_diff);
      const auto& at_ = c->max_diff_at;
      if (at_.index >= 0)
        t += " at token " + std::to_string(at_.token) + ", channel " + std::to_string(at_.channel) +
             (at_.head >= 0 ? ", head " + std::to_string(at_.head) : std::string()) + " (A " +
             fmt("%.4g", at_.a) + ", B " + fmt("%.4g", at_.b) + ")";
    }
    if (auto it = r.local.find(d.cell); it != r.local.end())
      t += "\nlocal error (replayed) " + sci(it->second);
    if (d.new_nonfinite) t += "\nnew NaN/Inf in B: " + count(d.new_nonfinite);
    m.tooltip = std::move(t);
    if (d.diverges) map->divergent.push_back(at);
    if (m.first) map->first = at;
  }
  map->row_diverges.assign(map->rows.size(), false);
  for (size_t at : map->divergent) map->row_diverges[at / columns.size()] = true;
  for (size_t k = 0; k < views::kMetricCount; ++k) {
    std::vector<float> worst(map->rows.size(), -1.0f);
    for (size_t at = 0; at < map->cells.size(); ++at)
      if (map->cells[at].present)
        worst[at / columns.size()] = std::max(worst[at / columns.size()], map->cells[at].heat[k]);
    std::vector<size_t>& order = map->rows_by_worst[k];
    order.resize(map->rows.size());
    for (size_t row = 0; row < order.size(); ++row) order[row] = row;
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return worst[a] > worst[b]; });
  }
  map->legend_low = kLegendLow;
  map->legend_high = kLegendHigh;
  if (const engine::CellDivergence* f = r.first()) {
    std::string h = "first divergence: " + engine::cell_name(f->cell);
    if (r.localization && r.localization->introduced_at)
      h += ", introduced at " + engine::cell_name(*r.localization->introduced_at);
    if (r.diagnosis && r.diagnosis->bug)
      h += "; diagnosis: " + std::string(engine::bug_class_label(*r.diagnosis->bug));
    map->headline = h;
  } else {
    map->headline = "no divergence: every cell is within its threshold";
  }
  return map;
}

views::Bars log_bars(const std::vector<double>& values, const std::string& what) {
  views::Bars b;
  for (size_t i = 0; i < values.size(); ++i) {
    b.heights.push_back(log_heat(values[i], -8, 0));
    b.tips.push_back(what + " " + std::to_string(i) + ": relative RMS " + sci(values[i]));
  }
  return b;
}

float count_height(uint64_t c, uint64_t max) {
  return max == 0 ? 0.0f : static_cast<float>(std::log1p(double(c)) / std::log1p(double(max)));
}

// The largest |b − a| over positions finite in both, with their (token, channel, head).
std::vector<views::TopElement> top_elements(const engine::Cell& cell, const engine::Tensor& a,
                                            const engine::Tensor& b,
                                            std::optional<uint64_t> head_dim) {
  std::vector<views::TopElement> top;
  if (a.shape != b.shape || a.data.size() != b.data.size()) return top;
  std::vector<std::pair<float, int64_t>> diffs;
  diffs.reserve(a.data.size());
  for (size_t i = 0; i < a.data.size(); ++i)
    if (std::isfinite(a.data[i]) && std::isfinite(b.data[i]))
      diffs.emplace_back(std::fabs(b.data[i] - a.data[i]), static_cast<int64_t>(i));
  const size_t k = std::min(kTopElements, diffs.size());
  std::partial_sort(diffs.begin(), diffs.begin() + static_cast<std::ptrdiff_t>(k), diffs.end(),
                    [](const auto& x, const auto& y) {
                      return x.first > y.first || (x.first == y.first && x.second < y.second);
                    });
  for (size_t j = 0; j < k; ++j) {
    views::TopElement e;
    const uint64_t i = static_cast<uint64_t>(diffs[j].second);
    const engine::MaxDiffLocation at = engine::locate_index(cell.stage, a.shape, i, head_dim);
    e.index = at.index;
    e.token = at.token;
    e.channel = at.channel;
    e.head = at.head;
    e.a = a.data[i];
    e.b = b.data[i];
    e.abs_diff = diffs[j].first;
    e.sign_flip = (e.a < 0 && e.b > 0) || (e.a > 0 && e.b < 0);
    top.push_back(e);
  }
  return top;
}

std::string shape_text(const std::vector<uint64_t>& s) {
  std::string t = "[";
  for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}

}  // namespace

namespace {

std::shared_ptr<const CellDetail> build_detail(const Worker::State& st, const engine::Cell& cell) {
  const engine::BisectResult& r = *st.result;
  const engine::CellComparison* c = r.comparison.find(cell);
  const engine::CellDivergence* d = nullptr;
  for (const auto& x : r.scan.cells)
    if (x.cell == cell) d = &x;
  const engine::Tensor* ta = st.trace_a.find(cell);
  const engine::Tensor* tb = st.trace_b.find(cell);
  if (!c || !d || !ta || !tb) return nullptr;

  auto out = std::make_shared<CellDetail>();
  CellDetail& o = *out;
  o.cell = cell;
  o.name = engine::cell_name(cell);
  o.shape = shape_text(c->shape_a);
  auto side = [&](const char* label, auto get) {
    o.stats.push_back({label, get(c->a), get(c->b)});
  };
  side("mean", [](const engine::SideStats& s) { return fmt("%.6g", s.mean); });
  side("std", [](const engine::SideStats& s) { return fmt("%.6g", s.std); });
  side("min", [](const engine::SideStats& s) { return fmt("%.6g", s.min); });
  side("max", [](const engine::SideStats& s) { return fmt("%.6g", s.max); });
  side("max |x|", [](const engine::SideStats& s) { return fmt("%.6g", s.max_abs); });
  side("finite", [](const engine::SideStats& s) { return count(s.finite); });
  side("NaN", [](const engine::SideStats& s) { return count(s.nan); });
  side("+Inf / -Inf",
       [](const engine::SideStats& s) { return count(s.pos_inf) + " / " + count(s.neg_inf); });
  side("near f16 limit",
       [](const engine::SideStats& s) { return std::string(s.near_f16_limit ? "yes" : "no"); });

  o.metrics.push_back({"elements", count(c->elements) + " (paired " + count(c->paired) +
                                       ", masked " + count(c->masked) + ", unpaired " +
                                       count(c->unpaired) + ")"});
  o.metrics.push_back({"relative RMS", sci(c->relative_rms)});
  o.metrics.push_back({"noise floor / threshold", sci(d->floor) + " / " + sci(d->threshold)});
  o.metrics.push_back({"cosine", fmt("%.8f", c->cosine)});
  o.metrics.push_back({"RMS diff", sci(c->rms_diff)});
  o.metrics.push_back({"SQNR", fmt("%.2f dB", c->sqnr_db)});
  o.metrics.push_back({"sign agreement", fmt("%.4f", c->sign_agreement)});
  o.metrics.push_back({"max |diff|", sci(c->max_abs_diff)});
  if (c->logits) {
    o.metrics.push_back({"mean KL(A || B)", sci(c->logits->mean_kl)});
    o.metrics.push_back({"top-1 agreement", fmt("%.3f", c->logits->top1_agreement)});
    o.metrics.push_back(
        {"top-" + std::to_string(c->logits->k) + " overlap", fmt("%.3f", c->logits->topk_overlap)});
  }

  const engine::ValueHistogram& vh = c->value_histogram;
  uint64_t vmax = 0;
  for (uint64_t v : vh.counts_a) vmax = std::max(vmax, v);
  for (uint64_t v : vh.counts_b) vmax = std::max(vmax, v);
  const size_t bins = vh.counts_a.size();
  const double width = bins ? (vh.max - vh.min) / double(bins) : 0.0;
  for (size_t i = 0; i < bins; ++i) {
    o.hist_a.heights.push_back(count_height(vh.counts_a[i], vmax));
    o.hist_b.heights.push_back(count_height(i < vh.counts_b.size() ? vh.counts_b[i] : 0, vmax));
    const std::string range = "[" + fmt("%.4g", vh.min + width * double(i)) + ", " +
                              fmt("%.4g", vh.min + width * double(i + 1)) + ")";
    o.hist_a.tips.push_back(range + "\nA: " + count(vh.counts_a[i]) +
                            "\nB: " + count(i < vh.counts_b.size() ? vh.counts_b[i] : 0));
  }
  o.hist_b.tips = o.hist_a.tips;
  o.hist_range = "[" + fmt("%.4g", vh.min) + ", " + fmt("%.4g", vh.max) + "], " +
                 std::to_string(bins) + " bins, log count";

  const engine::DiffHistogram& dh = c->diff_histogram;
  uint64_t dmax = dh.zero;
  for (uint64_t v : dh.negative) dmax = std::max(dmax, v);
  for (uint64_t v : dh.positive) dmax = std::max(dmax, v);
  auto decade = [](int e) { return "1e" + std::to_string(e); };
  for (size_t i = dh.negative.size(); i-- > 0;) {
    const int e = dh.min_decade + int(i);
    o.diff.heights.push_back(count_height(dh.negative[i], dmax));
    o.diff.tips.push_back("b-a in -[" + decade(e) + ", " + decade(e + 1) +
                          "): " + count(dh.negative[i]));
  }
  o.diff.heights.push_back(count_height(dh.zero, dmax));
  o.diff.tips.push_back("b-a below 1e" + std::to_string(dh.min_decade) +
                        " (or 0): " + count(dh.zero));
  for (size_t i = 0; i < dh.positive.size(); ++i) {
    const int e = dh.min_decade + int(i);
    o.diff.heights.push_back(count_height(dh.positive[i], dmax));
    o.diff.tips.push_back("b-a in +[" + decade(e) + ", " + decade(e + 1) +
                          "): " + count(dh.positive[i]));
  }
  o.diff_axis = {"-" + decade(dh.max_decade), "0", "+" + decade(dh.max_decade)};

  o.top = top_elements(cell, *ta, *tb, r.comparison.options.head_dim);
  o.sign_flips = static_cast<size_t>(
      std::count_if(o.top.begin(), o.top.end(), [](const auto& e) { return e.sign_flip; }));
  o.per_token = log_bars(c->per_token_relative_rms, "token");
  o.per_head = log_bars(c->per_head_relative_rms, "head");

  // Replay verdict: the bisection's own replays, then replays on request, then the heatmap.
  std::optional<engine::ReplayVerdict> v = localized(r, cell);
  if (auto it = st.replays.find(cell); it != st.replays.end()) {
    v = it->second;
    o.replayed_on_request = true;
  }
  if (v) {
    o.verdict = v->introduced ? "introduced" : "inherited";
    o.verdict_text = "local " + sci(v->local) + " (lane B's node on lane A's inputs), carried " +
                     sci(v->carried) + ", threshold " + sci(v->threshold);
  } else if (auto it = r.local.find(cell); it != r.local.end() && !std::isnan(it->second)) {
    o.verdict = it->second > d->threshold ? "introduced" : "inherited";
    o.verdict_text = "heatmap replay: local " + sci(it->second) + ", carried " + sci(d->rel_rms) +
                     ", threshold " + sci(d->threshold);
  } else {
    o.verdict = "not replayed";
    o.verdict_text = "press Replay to run lane B's node on lane A's inputs";
  }

  // Diagnosis: the bisection's (of its introducing cell), a replay's, or from the captures.
  std::optional<engine::Diagnosis> diag;
  std::string basis;
  if (r.diagnosed_cell && *r.diagnosed_cell == cell && r.diagnosis) {
    diag = r.diagnosis;
    basis = r.diagnosed_local ? "from the replayed node" : "from the captures";
  } else if (auto it = st.replay_diagnoses.find(cell); it != st.replay_diagnoses.end()) {
    diag = it->second;
    basis = "from the replayed node";
  } else {
    diag = engine::diagnose(cell, *ta, *tb, st.run_config.value_or(engine::ModelConfig{}), 0,
                            d->threshold);
    basis = "from the captures";
  }
  o.diagnosis_class = diag->bug ? std::string(engine::bug_class_name(*diag->bug)) : "";
  o.diagnosis_headline = diag->headline + " (" + basis + ")";
  o.evidence = diag->evidence;

  std::string clip = o.name + " " + o.shape + "\n";
  for (const auto& m : o.metrics) clip += m[0] + "\t" + m[1] + "\n";
  clip += "stat\tA\tB\n";
  for (const auto& s : o.stats) clip += s[0] + "\t" + s[1] + "\t" + s[2] + "\n";
  clip += "verdict\t" + o.verdict + "\t" + o.verdict_text + "\n";
  clip += "diagnosis\t" + o.diagnosis_headline + "\n";
  clip += "index\ttoken\tchannel\thead\tA\tB\t|B-A|\tsign flip\n";
  for (const auto& e : o.top)
    clip += std::to_string(e.index) + "\t" + std::to_string(e.token) + "\t" +
            std::to_string(e.channel) + "\t" + std::to_string(e.head) + "\t" + fmt("%.9g", e.a) +
            "\t" + fmt("%.9g", e.b) + "\t" + fmt("%.9g", e.abs_diff) + "\t" +
            (e.sign_flip ? "yes" : "no") + "\n";
  o.clipboard = std::move(clip);
  // The logits plot: the vocabulary-wide last dimension of lm_head.
  if (cell.stage == engine::Stage::LmHead && !ta->shape.empty() &&
      ta->shape.back() == st.model->config.vocab && ta->shape == tb->shape)
    o.logits = build_logits_plot(ta->data, tb->data, ta->shape.back());
  return out;
}

JobKind kind_of(const views::Command& c) {
  if (std::holds_alternative<views::RunCommand>(c)) return JobKind::Run;
  if (std::holds_alternative<views::SelectCommand>(c)) return JobKind::Select;
  if (std::holds_alternative<views::ReplayCommand>(c)) return JobKind::Replay;
  if (std::holds_alternative<views::LoadModelCommand>(c)) return JobKind::Load;
  if (std::holds_alternative<views::DropCommand>(c)) return JobKind::Load;
  if (std::holds_alternative<views::ListDirCommand>(c)) return JobKind::ListDir;
  if (std::holds_alternative<views::OpenDumpsCommand>(c)) return JobKind::OpenDumps;
  if (std::holds_alternative<views::ExportCommand>(c)) return JobKind::Export;
  if (std::holds_alternative<views::ExportPngCommand>(c)) return JobKind::ExportPng;
  return JobKind::None;
}

}  // namespace

Worker::Worker(WorkerOptions options)
    : options_(std::move(options)), state_(std::make_unique<State>()) {
  state_->recent = options_.recent;
  auto s = std::make_shared<Snapshot>();
  s->log = std::make_shared<const std::vector<LogEntry>>();
  s->title = "starting";
  s->lane_names = lane_names();
  snapshot_ = s;
  thread_ = std::thread([this] { loop(); });
}

Worker::~Worker() {
  {
    std::lock_guard lock(queue_mutex_);
    stop_ = true;
    queue_.clear();
  }
  cancel_ = true;
  queue_cv_.notify_all();
  thread_.join();
  std::error_code ec;
  if (!state_->model_path.empty()) std::filesystem::remove_all(options_.scratch, ec);
}

void Worker::post(const views::Command& command) {
  if (std::holds_alternative<views::CancelCommand>(command)) {
    {
      std::lock_guard lock(queue_mutex_);
      std::erase_if(queue_, [](const views::Command& c) {
        return kind_of(c) == JobKind::Run || kind_of(c) == JobKind::Replay;
      });
    }
    cancel_ = true;
    log(LogEntry::Level::Info, "cancel requested");
    return;
  }
  if (const auto* l = std::get_if<views::LogCommand>(&command)) {
    log(LogEntry::Level::Info, l->text);
    return;
  }
  {
    std::lock_guard lock(queue_mutex_);
    // Drops are all kept: each dropped path is a request of its own.
    const bool replaces = !std::holds_alternative<views::DropCommand>(command);
    auto it = std::find_if(queue_.begin(), queue_.end(), [&](const views::Command& c) {
      return replaces && c.index() == command.index();
    });
    if (it != queue_.end())
      *it = command;  // the newer request replaces the queued older one
    else
      queue_.push_back(command);
  }
  queue_cv_.notify_one();
}

std::shared_ptr<const Snapshot> Worker::snapshot() const {
  std::lock_guard lock(snapshot_mutex_);
  return snapshot_;
}

void Worker::update(const std::function<void(Snapshot&)>& change) {
  {
    // The copy and the change happen outside snapshot_mutex_, which the GUI thread takes every
    // frame: held across them by this lower-priority thread, it made frames wait.
    std::lock_guard writer(update_mutex_);
    std::shared_ptr<const Snapshot> current = snapshot();
    auto next = std::make_shared<Snapshot>(*current);
    change(*next);
    next->seq = current->seq + 1;
    std::lock_guard lock(snapshot_mutex_);
    current = std::exchange(snapshot_, std::move(next));
  }  // the previous snapshot released here, after the lock
  if (options_.wake) options_.wake();
}

void Worker::log(LogEntry::Level level, const std::string& text) {
  update([&](Snapshot& s) {
    auto log = std::make_shared<std::vector<LogEntry>>(*s.log);
    log->push_back({level, clock_text(), text});
    s.log = std::move(log);
  });
}

void Worker::fail(const std::string& what, const std::string& detail) {
  log(LogEntry::Level::Error, what + ": " + detail);
  update([&](Snapshot& s) {
    ++s.error_seq;
    s.error_title = what;
    s.error_text = detail;
  });
}

void Worker::loop() {
  lower_worker_priority();  // before any compute thread starts: they inherit it
  publish_recent();
  for (;;) {
    views::Command command;
    {
      std::unique_lock lock(queue_mutex_);
      queue_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      command = queue_.front();
      queue_.pop_front();
      cancel_ = false;
    }
    const JobKind kind = kind_of(command);
    update([&](Snapshot& s) { s.job = {kind, true, 0.0, "starting", now_seconds()}; });
    try {
      execute(command);
    } catch (const std::exception& e) {
      const char* what = kind == JobKind::Run         ? "The bisection failed"
                         : kind == JobKind::Replay    ? "The replay failed"
                         : kind == JobKind::Load      ? "Opening the model failed"
                         : kind == JobKind::ListDir   ? "Listing the folder failed"
                         : kind == JobKind::OpenDumps ? "Opening the dump directories failed"
                         : kind == JobKind::Export    ? "The export failed"
                         : kind == JobKind::ExportPng ? "The PNG export failed"
                                                      : "Showing the cell failed";
      fail(what, e.what());
    }
    update([&](Snapshot& s) {
      s.job.running = false;
      s.job.fraction = 1.0;
    });
  }
}

void Worker::execute(const views::Command& command) {
  State& st = *state_;
  auto progress = [&](double fraction, const std::string& message) {
    update([&](Snapshot& s) {
      s.job.fraction = fraction;
      s.job.message = message;
    });
  };

  if (const auto* run = std::get_if<views::RunCommand>(&command)) {
    run_job(*run);
    return;
  }
  if (const auto* load = std::get_if<views::LoadModelCommand>(&command)) {
    load_model(load->path);
    return;
  }
  if (const auto* d = std::get_if<views::DropCommand>(&command)) {
    drop(d->paths);
    return;
  }
  if (const auto* ls = std::get_if<views::ListDirCommand>(&command)) {
    std::filesystem::path dir =
        ls->dir.empty() ? std::filesystem::current_path() : std::filesystem::path(ls->dir);
    // A folder that is gone (a recent model's, say): list the nearest one that exists.
    std::error_code ec;
    while (!std::filesystem::is_directory(dir, ec) && dir.has_parent_path() &&
           dir.parent_path() != dir)
      dir = dir.parent_path();
    auto listing = std::make_shared<const views::DirListing>(list_dir(dir));
    if (!listing->error.empty()) log(LogEntry::Level::Warning, listing->error);
    update([&](Snapshot& s) { s.listing = listing; });
    return;
  }

  if (is_dumps_command(command)) {
    run_dumps_job(command,
                  // The model only when the result was computed on it (run_config), not the
                  // demo left open under a comparison of two dumps.
                  {st.result ? &*st.result : nullptr, &st.trace_a, &st.trace_b,
                   st.model && st.run_config ? &*st.model : nullptr,
                   st.model && st.run_config ? st.model_path : std::filesystem::path(), st.fault},
                  {progress, [&](LogEntry::Level l, const std::string& t) { log(l, t); },
                   [&](const std::function<void(Snapshot&)>& f) { update(f); }, &cancel_});
    return;
  }

  if (!st.result) throw Error("nothing has run yet: press Run (Ctrl+R) first");

  if (const auto* sel = std::get_if<views::SelectCommand>(&command)) {
    std::shared_ptr<const CellDetail> detail = build_detail(st, sel->cell);
    if (!detail) throw Error("no comparison holds " + engine::cell_name(sel->cell));
    update([&](Snapshot& s) { s.detail = detail; });
    return;
  }

  if (const auto* rep = std::get_if<views::ReplayCommand>(&command)) {
    const engine::CellDivergence* d = nullptr;
    for (const auto& x : st.result->scan.cells)
      if (x.cell == rep->cell) d = &x;
    if (!d) throw Error("no comparison holds " + engine::cell_name(rep->cell));
    if (!st.lane_a || !st.lane_b)
      throw Error(
          "replay runs lane B's own implementation of a node on lane A's inputs; this "
          "result compares a dump, which has none: choose two live lanes and Run");
    const std::string name = engine::cell_name(rep->cell);
    progress(0.1, "replaying " + name + " on lane " + st.lane_b->name());
    const engine::ReplayVerdict v =
        engine::replay_cell(*st.lane_a, *st.lane_b, *st.model, st.trace_a, *d, d->threshold);
    progress(0.6, "diagnosing " + name + " from its replay");
    const engine::Tensor out =
        engine::replay_output(*st.lane_a, *st.lane_b, *st.model, st.trace_a, rep->cell);
    st.replays[rep->cell] = v;
    st.replay_diagnoses[rep->cell] = engine::diagnose(rep->cell, *st.trace_a.find(rep->cell), out,
                                                      st.model->config, 0, d->threshold);
    std::shared_ptr<const CellDetail> detail = build_detail(st, rep->cell);
    update([&](Snapshot& s) { s.detail = detail; });
    log(LogEntry::Level::Info, "replayed " + name + ": " +
                                   (v.introduced ? "introduced" : "inherited") + " (local " +
                                   sci(v.local) + ", threshold " + sci(v.threshold) + ")");
  }
}

void Worker::run_job(const views::RunCommand& run) {
  State& st = *state_;
  auto progress = [&](double fraction, const std::string& message) {
    update([&](Snapshot& s) {
      s.job.fraction = fraction;
      s.job.message = message;
    });
  };
  const auto started = std::chrono::steady_clock::now();
  const engine::RunMode run_mode = run.decode ? engine::RunMode::Decode : engine::RunMode::Prefill;
  const std::string mode_name(engine::run_mode_name(run_mode));
  auto dump_dir = [](const std::string& lane) -> std::optional<std::string> {
    if (lane.rfind("dump:", 0) != 0) return std::nullopt;
    return lane.substr(5);
  };
  const std::optional<std::string> dump_a = dump_dir(run.lane_a), dump_b = dump_dir(run.lane_b);
  if ((dump_a && dump_a->empty()) || (dump_b && dump_b->empty()))
    throw Error("a dump lane names no directory: type the dump's directory under the lane");

  // What the map keeps; checked before anything runs.
  const LayerRange layers = parse_layer_range(run.layers);
  std::vector<engine::Stage> stages;
  for (const std::string& name : run.stages) {
    const std::optional<engine::Stage> st_ = engine::find_stage(name);
    if (!st_) throw Error("stages: \"" + name + "\" is not a stage name");
    stages.push_back(*st_);
  }
  auto keep = [&](const engine::Cell& c) {
    if (!stages.empty() && std::find(stages.begin(), stages.end(), c.stage) == stages.end())
      return false;
    return !c.layer || layers.contains(*c.layer);
  };
  // The same choice as what the live lanes capture for the drill-down and the exports (the
  // bisection itself compares every cell: it needs them to find the first divergence and to
  // replay its inputs).
  engine::CapturePlan kept;
  const std::optional<std::pair<uint32_t, uint32_t>> range =
      layers.first == 0 && layers.last == UINT32_MAX
          ? std::nullopt
          : std::optional(std::pair(layers.first, layers.last));
  if (stages.empty()) kept.add_all(range);
  for (engine::Stage stage : stages) kept.add(stage, range);

  std::string fault_text = run.fault.empty() ? "no fault" : run.fault;
  const std::string lanes_text = "lane " + run.lane_a + " vs lane " + run.lane_b;
  const bool live = !dump_a || !dump_b;
  if (live && (dump_a || dump_b) && !st.user_model)
    throw Error(lanes_text + ": running a live lane on a dump's input needs the model the dump " +
                "ran; open it first (Model & lanes: path, Open)");
  if (live && !st.model) {
    progress(0.0, "writing the demo model");
    std::filesystem::create_directories(options_.scratch);
    const std::filesystem::path path = options_.scratch / "demo.gguf";
    write_demo_model(path, "llama", options_.threads, &cancel_);
    st.model_path = path;
    st.model.emplace(engine::open_model(path, engine::FamilyRegistry::load()));
    st.tokens = resolve_tokens("gui", *st.model, path.string(), TokenArgs{.prompt = kDemoPrompt});
  }
  const std::string model_name = !live && !st.user_model ? std::string("dumps")
                                 : st.user_model
                                     ? std::filesystem::path(st.model_path).filename().string()
                                     : std::string("demo model");

  // The input: the dump's token ids when a lane is a dump, else the typed ones, else the
  // default (the demo's prompt; a model's default tokens).
  std::vector<int32_t> tokens;
  if (live && !dump_a && !dump_b) {
    TokenArgs args;
    if (run.use_token_ids && !run.token_ids.empty())
      args.tokens = parse_token_ids(run.token_ids);
    else if (!run.use_token_ids && !run.prompt.empty())
      args = {.prompt = run.prompt, .chat = run.chat, .tokens = {}};
    if (!args.tokens.empty() || !args.prompt.empty())
      tokens = resolve_tokens("run", *st.model, st.model_path.string(), args);
    else
      tokens = st.user_model ? default_tokens(*st.model) : st.tokens;
  }

  std::optional<engine::FaultSpec> fault;
  if (!run.fault.empty()) {
    if (dump_b) {
      log(LogEntry::Level::Warning, "fault " + run.fault + " not planted: lane B is a dump");
      fault_text = "no fault";
    } else {
      fault = engine::FaultSpec::parse(run.fault);
      engine::resolve_fault(*fault, st.model->plan, st.model->config);
    }
  }
  log(LogEntry::Level::Info,
      "run: " + model_name + ", " + lanes_text + ", " + fault_text + ", " + mode_name);

  engine::BisectOptions options;
  options.mode = run_mode;
  options.threads = options_.threads;
  options.settings.abs_threshold = run.abs_threshold;
  options.settings.floor_factor = run.floor_factor;
  options.floor = run.floor_cpu_ref ? engine::FloorSource::CpuVsRef : engine::FloorSource::None;

  std::unique_ptr<engine::Lane> a, b;
  engine::Trace trace_a, trace_b;
  std::optional<engine::BisectResult> result;
  if (!dump_a && !dump_b) {
    progress(0.02, "loading lanes " + run.lane_a + " and " + run.lane_b);
    a = make_lane(run.lane_a, {.threads = options_.threads, .fault = {}});
    b = make_lane(run.lane_b, {.threads = options_.threads, .fault = fault});
    a->load(*st.model);
    b->load(*st.model);
    options.heatmaps = true;
    engine::BisectResult r = engine::bisect(
        *a, *b, *st.model, tokens, options,
        [&](const engine::BisectProgress& p) { progress(0.03 + 0.85 * p.fraction, p.message); },
        &cancel_);
    if (r.cancelled) {
      log(LogEntry::Level::Warning, "run cancelled; the map keeps the previous result");
      return;
    }
    progress(0.9, "capturing lane " + run.lane_a + " for the drill-down");
    std::optional<engine::Trace> ta = engine::capture_run(*a, tokens, run_mode, kept, &cancel_);
    progress(0.95, "capturing lane " + run.lane_b + " for the drill-down");
    std::optional<engine::Trace> tb = engine::capture_run(*b, tokens, run_mode, kept, &cancel_);
    if (!ta || !tb || cancel_) {
      log(LogEntry::Level::Warning, "run cancelled; the map keeps the previous result");
      return;
    }
    trace_a = std::move(*ta);
    trace_b = std::move(*tb);
    result.emplace(std::move(r));
  } else {
    // A dump on either side: compare saved traces the way `lockstep diff` does.
    const engine::ModelConfig* config = st.user_model ? &st.model->config : nullptr;
    auto read_dump = [&](const std::string& dir, double at) {
      progress(at, "reading dump " + dir);
      engine::LoadedDump d = engine::load_dump(dir, config);
      for (const formats::DumpIssue& issue : d.issues)
        log(LogEntry::Level::Warning, dir + ": " +
                                          std::string(formats::dump_issue_kind_name(issue.kind)) +
                                          ": " + issue.message);
      if (d.trace.size() == 0)
        throw Error(dir + " holds no readable cell (the log lists its files' problems)");
      return std::move(d.trace);
    };
    if (dump_a) trace_a = read_dump(*dump_a, 0.05);
    if (dump_b) trace_b = read_dump(*dump_b, 0.15);
    if (dump_a && dump_b) {
      if (!trace_a.tokens.empty() && !trace_b.tokens.empty() && trace_a.tokens != trace_b.tokens)
        throw Error(*dump_a + " and " + *dump_b +
                    " ran different token ids (their manifests disagree): a comparison would be "
                    "meaningless");
      if (trace_a.tokens.empty()) trace_a.tokens = trace_b.tokens;
      tokens = trace_a.tokens;
    } else {
      const std::string& dir = dump_a ? *dump_a : *dump_b;
      const std::string& lane = dump_a ? run.lane_b : run.lane_a;
      tokens = dump_a ? trace_a.tokens : trace_b.tokens;
      if (tokens.empty())
        throw Error(dir +
                    " records no token ids (its manifest.json is missing or has no "
                    "\"tokens\"): lane " +
                    lane +
                    " cannot run the same input; compare two dumps instead, or write both with "
                    "`lockstep dump`");
      tokens = resolve_tokens("run", *st.model, st.model_path.string(),
                              TokenArgs{.prompt = {}, .chat = false, .tokens = tokens});
      progress(0.25, "running lane " + lane + " on the dump's " + std::to_string(tokens.size()) +
                         " tokens");
      std::unique_ptr<engine::Lane> l =
          make_lane(lane, {.threads = options_.threads, .fault = dump_a ? fault : std::nullopt});
      l->load(*st.model);
      std::optional<engine::Trace> t =
          engine::capture_run(*l, tokens, run_mode, engine::CapturePlan::all(), &cancel_);
      if (!t || cancel_) {
        log(LogEntry::Level::Warning, "run cancelled; the map keeps the previous result");
        return;
      }
      (dump_a ? trace_b : trace_a) = std::move(*t);
    }
    std::optional<engine::NoiseFloor> floor;
    std::string floor_note;
    if (options.floor == engine::FloorSource::CpuVsRef) {
      if (!st.user_model)
        floor_note = "none: measuring it needs the model the dumps ran (open it first)";
      else if (tokens.empty())
        floor_note = "none: neither dump's manifest records the token ids it ran";
      else {
        progress(0.5, "measuring the noise floor (cpu against ref)");
        floor =
            engine::measure_noise_floor(*st.model, tokens, run_mode, options_.threads, &cancel_);
        if (!floor) {
          log(LogEntry::Level::Warning, "run cancelled; the map keeps the previous result");
          return;
        }
      }
    }
    progress(0.8, "comparing " + std::to_string(trace_a.size()) + " cells");
    result.emplace(
        engine::diff_traces(trace_a, trace_b, config, floor ? &*floor : nullptr, options));
    if (!floor_note.empty()) {
      result->floor_note = floor_note;
      log(LogEntry::Level::Info, "noise floor " + floor_note);
    }
  }

  st.lane_a = std::move(a);
  st.lane_b = std::move(b);
  st.trace_a = std::move(trace_a);
  st.trace_b = std::move(trace_b);
  st.replays.clear();
  st.replay_diagnoses.clear();
  st.fault = fault_text;
  st.run_config.reset();
  if (st.model && (live || st.user_model)) st.run_config = st.model->config;
  st.result.emplace(std::move(*result));
  st.map = build_map(*st.result, keep);
  std::shared_ptr<const CellDetail> detail;
  if (st.map->first) detail = build_detail(st, st.map->cells[*st.map->first].cell);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::string title = model_name;
  if (st.model && (live || st.user_model))
    title +=
        " (" + st.model->family.name + ", " + std::to_string(st.model->config.layers) + " layers)";
  title += ", " + std::to_string(tokens.size()) + " tokens, lane " + run.lane_a + " vs lane " +
           run.lane_b + " (" + fault_text + "), " + mode_name;
  update([&](Snapshot& s) {
    s.title = title;
    s.kept_cells = st.trace_a.size();
    s.map = st.map;
    s.detail = detail;
  });
  log(LogEntry::Level::Info, st.map->headline + fmt(" (%.2f s)", seconds));
  if (live && !dump_a && !dump_b)
    log(LogEntry::Level::Info,
        "kept " + std::to_string(st.trace_a.size()) +
            " cells a lane for the drill-down and the exports (stages: " +
            (run.stages.empty() ? std::string("all") : std::to_string(run.stages.size())) +
            ", layers: " + run.layers + ")");
}

void Worker::load_model(const std::string& path) {
  State& st = *state_;
  if (path.empty()) throw Error("no path given: type a model's path, or press Browse");
  update([&](Snapshot& s) {
    s.job.fraction = 0.1;
    s.job.message = "opening " + path;
  });
  log(LogEntry::Level::Info, "open model " + path);
  std::error_code ec;
  const std::filesystem::path abs = std::filesystem::absolute(path, ec);
  engine::Model model = engine::open_model(abs, engine::FamilyRegistry::load());
  auto info = std::make_shared<const views::ModelInfo>(model_info(abs, model));
  // Lanes, traces and the result belong to the previous model.
  st.lane_a.reset();
  st.lane_b.reset();
  st.result.reset();
  st.trace_a = {};
  st.trace_b = {};
  st.replays.clear();
  st.replay_diagnoses.clear();
  st.map.reset();
  st.run_config.reset();
  if (!st.user_model && !st.model_path.empty()) std::filesystem::remove_all(options_.scratch, ec);
  st.model.emplace(std::move(model));
  st.model_path = abs;
  st.user_model = true;
  st.tokens.clear();
  st.recent = push_recent(st.recent, abs.string(), GuiSettings::kMaxRecent);
  update([&](Snapshot& s) {
    s.model = info;
    s.map = nullptr;
    s.detail = nullptr;
    s.title = abs.filename().string() + " opened; press Run (Ctrl+R)";
  });
  publish_recent();
  log(LogEntry::Level::Info, "opened " + abs.string() + ": " + info->family + ", " +
                                 std::to_string(info->layers) + " layers, " + info->tensor_bytes);
}

void Worker::drop(const std::vector<std::string>& paths) {
  std::vector<std::string> dumps;
  for (const std::string& p : paths) {
    std::error_code ec;
    const bool dir = std::filesystem::is_directory(p, ec);
    const bool hf = dir && std::filesystem::exists(std::filesystem::path(p) / "config.json", ec);
    if (dir && !hf && is_dump_dir(p)) {
      log(LogEntry::Level::Info, "dropped dump directory " + p + ": it becomes a lane");
      dumps.push_back(p);
      continue;
    }
    if (dir && !hf)
      throw Error(p +
                  " is neither a model (a .gguf file, or a folder with config.json and "
                  "safetensors) nor an APRT dump (manifest.json, *.aprt or *.npy files)");
    load_model(p);
  }
  if (dumps.empty()) return;
  update([&](Snapshot& s) {
    ++s.dump_drop_seq;
    s.dump_drop_dirs = dumps;
  });
}

void Worker::publish_recent() {
  auto recent =
      std::make_shared<const std::vector<views::RecentModel>>(check_recent(state_->recent));
  update([&](Snapshot& s) { s.recent = recent; });
}

}  // namespace lockstep::app
