#pragma once
// The worker's jobs for the Dumps tab (views/dumps_view.h): open dump directories, export the
// current run, write a captured PNG. They run on the worker thread, read the worker's state
// through DumpsJobInputs and publish through DumpsJobContext; the logic itself is
// engine/dump_export.h's.

#include <atomic>
#include <filesystem>
#include <functional>
#include <string>

#include "engine/bisect_run.h"
#include "engine/trace.h"
#include "engine/weights.h"
#include "views/snapshot.h"

namespace lockstep::app {

struct DumpsJobInputs {
  const engine::BisectResult* result = nullptr;  // null: nothing has run
  const engine::Trace* trace_a = nullptr;
  const engine::Trace* trace_b = nullptr;
  const engine::Model* model = nullptr;
  std::filesystem::path model_path;
  std::string fault;  // the planted fault's text, for the reports
};

struct DumpsJobContext {
  std::function<void(double, const std::string&)> progress;
  std::function<void(views::LogEntry::Level, const std::string&)> log;
  std::function<void(const std::function<void(views::Snapshot&)>&)> update;
  const std::atomic<bool>* cancel = nullptr;
};

bool is_dumps_command(const views::Command& command);
// Runs an OpenDumps, Export or ExportPng command; throws lockstep::Error on failure (the
// worker logs it and raises the dialog).
void run_dumps_job(const views::Command& command, const DumpsJobInputs& in,
                   const DumpsJobContext& cx);

}  // namespace lockstep::app
