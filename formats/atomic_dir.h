#pragma once
// Writes that never leave anything half-done: a file or a directory is built under a
// temporary sibling name and renamed into place only once it is complete.

#include <cstddef>
#include <filesystem>
#include <functional>
#include <span>
#include <string>

namespace lockstep::formats {

// "<dest>.tmp-<pid>-<n>": a sibling of `dest` (so the final rename stays on one filesystem),
// unique within the process and across processes.
std::filesystem::path temp_sibling(const std::filesystem::path& dest);

// Writes `bytes` to a temporary sibling of `path`, flushes it, and renames it onto `path`
// (replacing a previous file). On any failure the temporary file is removed and
// lockstep::Error names `path` and the reason.
void write_file_atomic(const std::filesystem::path& path, std::span<const std::byte> bytes);

// A directory built under a temporary sibling name and renamed to `dest` by commit().
// Without commit() the destructor removes the temporary directory and everything in it.
//
// When `dest` already exists: commit() fails unless `overwrite` is set. With `overwrite`,
// the old directory is replaced only after the new one is complete, by an atomic exchange
// (renameat2 RENAME_EXCHANGE) where the filesystem supports it, otherwise by renaming the
// old one aside first and back again if the second rename fails. A `dest` that is not a
// directory is never replaced. `may_replace`, when given, is asked before an existing
// directory is removed, so callers can refuse to delete directories they did not write.
class AtomicDir {
 public:
  explicit AtomicDir(std::filesystem::path dest, bool overwrite = false);
  ~AtomicDir();
  AtomicDir(const AtomicDir&) = delete;
  AtomicDir& operator=(const AtomicDir&) = delete;

  const std::filesystem::path& dest() const { return dest_; }
  // Where the contents are written until commit().
  const std::filesystem::path& path() const { return tmp_; }
  bool committed() const { return committed_; }

  // Renames the temporary directory to dest(); throws lockstep::Error (leaving the temporary
  // directory for the destructor to remove) if dest() exists and may not be replaced.
  // `may_replace` returns an empty string to allow replacing an existing dest(), or the
  // reason it must not be.
  using ReplaceCheck = std::function<std::string(const std::filesystem::path&)>;
  void commit(const ReplaceCheck& may_replace = {});

 private:
  std::filesystem::path dest_;
  std::filesystem::path tmp_;
  bool overwrite_;
  bool committed_ = false;
};

}  // namespace lockstep::formats
