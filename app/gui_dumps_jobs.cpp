#include "app/gui_dumps_jobs.h"

#include <memory>
#include <optional>
#include <vector>

#include "app/gui_png_capture.h"
#include "engine/dump_export.h"
#include "formats/error.h"

namespace lockstep::app {
namespace {

using views::LogEntry;
namespace fs = std::filesystem;

void open_dumps(const views::OpenDumpsCommand& c, const DumpsJobContext& cx) {
  if (c.dir_a.empty()) throw Error("type the path of dump directory A first");
  cx.progress(0.1, "scanning " + c.dir_a);
  std::optional<fs::path> dir_b;
  if (!c.dir_b.empty()) dir_b = fs::path(c.dir_b);
  auto listings =
      std::make_shared<const std::vector<engine::DumpListing>>(engine::list_dumps(c.dir_a, dir_b));
  cx.update([&](views::Snapshot& s) { s.dumps = listings; });
  for (const engine::DumpListing& l : *listings) {
    cx.log(l.malformed || l.missing ? LogEntry::Level::Warning : LogEntry::Level::Info,
           "opened dump " + l.dir + ": " + std::to_string(l.ok) + " cells ok, " +
               std::to_string(l.missing) + " missing, " + std::to_string(l.malformed) +
               " malformed" +
               (l.notes.empty() ? "" : ", " + std::to_string(l.notes.size()) + " other issues"));
    for (const engine::DumpListingRow& r : l.rows)
      if (r.status == engine::DumpCellStatus::Malformed)
        cx.log(LogEntry::Level::Warning, "malformed: " + r.detail);
  }
}

void export_run(const views::ExportCommand& c, const DumpsJobInputs& in,
                const DumpsJobContext& cx) {
  if (!in.result) throw Error("nothing to export yet: press Run (Ctrl+R) first");
  engine::ExportSource source;
  source.a = in.trace_a;
  source.b = in.trace_b;
  source.result = in.result;
  source.model = in.model;
  source.model_path = in.model_path;
  source.context.tool_version = LOCKSTEP_VERSION;
  source.context.model = in.model_path.string();
  source.context.fault = in.fault;
  engine::ExportSpec spec;
  spec.dest = expand_home(c.dest);
  spec.overwrite = c.overwrite;
  spec.cells = c.cells;
  spec.formats = c.formats;
  cx.log(LogEntry::Level::Info, "export to " + spec.dest.string() + " started");
  const engine::ExportOutcome out = engine::export_run(source, spec, cx.progress, cx.cancel);
  if (out.cancelled) {
    cx.log(LogEntry::Level::Warning,
           "export cancelled; nothing was written to " + spec.dest.string());
    return;
  }
  auto paths = std::make_shared<std::vector<std::string>>();
  paths->push_back(out.dest.string());
  for (const fs::path& f : out.files) {
    paths->push_back(f.string());
    cx.log(LogEntry::Level::Info, "wrote " + f.string());
  }
  cx.update([&](views::Snapshot& s) { s.exported = paths; });
  cx.log(LogEntry::Level::Info,
         "exported " + std::to_string(out.files.size()) + " files to " + out.dest.string());
}

void export_png(const views::ExportPngCommand& c, const DumpsJobContext& cx) {
  const fs::path path = expand_home(c.path);
  cx.progress(0.2, "encoding " + path.string());
  if (!c.rgb) throw Error("PNG export of " + c.widget + ": nothing was captured");
  write_png(path, c.width, c.height, *c.rgb);
  cx.update([&](views::Snapshot& s) { s.last_png = path.string(); });
  cx.log(LogEntry::Level::Info, "wrote " + path.string() + " (" + c.widget + ", " +
                                    std::to_string(c.width) + "x" + std::to_string(c.height) + ")");
}

}  // namespace

bool is_dumps_command(const views::Command& command) {
  return std::holds_alternative<views::OpenDumpsCommand>(command) ||
         std::holds_alternative<views::ExportCommand>(command) ||
         std::holds_alternative<views::ExportPngCommand>(command);
}

void run_dumps_job(const views::Command& command, const DumpsJobInputs& in,
                   const DumpsJobContext& cx) {
  if (const auto* o = std::get_if<views::OpenDumpsCommand>(&command)) open_dumps(*o, cx);
  if (const auto* e = std::get_if<views::ExportCommand>(&command)) export_run(*e, in, cx);
  if (const auto* p = std::get_if<views::ExportPngCommand>(&command)) export_png(*p, cx);
}

}  // namespace lockstep::app
