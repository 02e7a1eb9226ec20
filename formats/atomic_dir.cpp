#include "formats/atomic_dir.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <system_error>

#include "formats/error.h"

// The flag values of renameat(2); glibc's <stdio.h> defines them from 2.28 on.
#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1u << 0)
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1u << 1)
#endif

namespace lockstep::formats {
namespace fs = std::filesystem;
namespace {

std::atomic<uint64_t> g_temp_counter{0};

// "a/b/" and "a/b" name the same destination; the temporary name hangs off the last part.
fs::path normalized(const fs::path& p) {
  fs::path n = p.lexically_normal();
  if (n.filename().empty() && n.has_parent_path()) n = n.parent_path();
  return n;
}

fs::path numbered_sibling(const fs::path& dest, const char* tag) {
  fs::path d = normalized(dest);
  std::string name = d.filename().string() + tag + std::to_string(::getpid()) + "-" +
                     std::to_string(g_temp_counter.fetch_add(1));
  return d.parent_path() / name;
}

std::string errno_text(int e) {
  return std::strerror(e);
}

// rename(2) with flags where the kernel and filesystem support them; returns errno or 0.
int rename_with_flags(const fs::path& from, const fs::path& to, unsigned flags) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 28))
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), flags) == 0) return 0;
  return errno;
#else
  (void)from;
  (void)to;
  (void)flags;
  return ENOSYS;
#endif
}

bool unsupported(int e) {
  return e == EINVAL || e == ENOSYS || e == ENOTSUP;
}

}  // namespace

fs::path temp_sibling(const fs::path& dest) {
  return numbered_sibling(dest, ".tmp-");
}

void write_file_atomic(const fs::path& path, std::span<const std::byte> bytes) {
  fs::path tmp = temp_sibling(path);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0)
    throw Error(path.string() + ": cannot create " + tmp.string() + ": " + errno_text(errno));
  const std::byte* p = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int e = n < 0 ? errno : EIO;
      ::close(fd);
      ::unlink(tmp.c_str());
      throw Error(path.string() + ": cannot write: " + errno_text(e));
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (::close(fd) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw Error(path.string() + ": cannot write: " + errno_text(e));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw Error(path.string() + ": cannot rename " + tmp.string() +
                " into place: " + errno_text(e));
  }
}

AtomicDir::AtomicDir(fs::path dest, bool overwrite)
    : dest_(normalized(dest)), overwrite_(overwrite) {
  std::error_code ec;
  // Fail before the caller spends time producing contents that could never be committed.
  if (!overwrite_ && fs::exists(fs::symlink_status(dest_, ec)))
    throw Error(dest_.string(), Error::kNoOffset,
                "a destination that does not exist yet (pass overwrite to replace it)",
                "an existing " + std::string(fs::is_directory(dest_, ec) ? "directory" : "file"));
  if (dest_.has_parent_path()) {
    fs::create_directories(dest_.parent_path(), ec);
    if (ec) throw Error(dest_.string() + ": cannot create parent directory: " + ec.message());
  }
  for (int attempt = 0; attempt < 100; ++attempt) {
    fs::path candidate = temp_sibling(dest_);
    if (fs::create_directory(candidate, ec)) {
      tmp_ = candidate;
      return;
    }
    if (ec) throw Error(candidate.string() + ": cannot create directory: " + ec.message());
  }
  throw Error(dest_.string() + ": cannot find a free temporary directory name");
}

AtomicDir::~AtomicDir() {
  if (!committed_ && !tmp_.empty()) {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }
}

void AtomicDir::commit(const ReplaceCheck& may_replace) {
  if (committed_) throw Error(dest_.string() + ": directory already committed");
  std::error_code ec;
  fs::file_status st = fs::symlink_status(dest_, ec);
  if (!fs::exists(st)) {
    // NOREPLACE: a directory created meanwhile by someone else must not be clobbered
    // (plain rename(2) silently replaces an empty directory).
    int e = rename_with_flags(tmp_, dest_, RENAME_NOREPLACE);
    if (unsupported(e)) e = std::rename(tmp_.c_str(), dest_.c_str()) == 0 ? 0 : errno;
    if (e != 0)
      throw Error(dest_.string() + ": cannot rename " + tmp_.string() +
                  " into place: " + errno_text(e));
    committed_ = true;
    return;
  }
  if (!overwrite_)
    throw Error(dest_.string(), Error::kNoOffset,
                "a destination that does not exist (pass overwrite to replace it)",
                "an existing entry");
  if (!fs::is_directory(st))
    throw Error(dest_.string(), Error::kNoOffset, "a directory to replace",
                fs::is_symlink(st) ? "a symbolic link" : "a file");
  if (may_replace) {
    std::string why = may_replace(dest_);
    if (!why.empty())
      throw Error(dest_.string(), Error::kNoOffset, "a directory that may be replaced", why);
  }
  int e = rename_with_flags(tmp_, dest_, RENAME_EXCHANGE);
  if (e == 0) {
    // tmp_ now holds the old contents.
    committed_ = true;
    fs::remove_all(tmp_, ec);
    return;
  }
  if (!unsupported(e))
    throw Error(dest_.string() + ": cannot exchange with " + tmp_.string() + ": " + errno_text(e));
  fs::path old = numbered_sibling(dest_, ".old-");
  if (std::rename(dest_.c_str(), old.c_str()) != 0)
    throw Error(dest_.string() + ": cannot move the old directory aside: " + errno_text(errno));
  if (std::rename(tmp_.c_str(), dest_.c_str()) != 0) {
    int e2 = errno;
    std::rename(old.c_str(), dest_.c_str());
    throw Error(dest_.string() + ": cannot rename " + tmp_.string() +
                " into place: " + errno_text(e2));
  }
  committed_ = true;
  fs::remove_all(old, ec);
}

}  // namespace lockstep::formats
