#!/usr/bin/env bash
# Prepares what a run on the GPU machine needs and cannot get there (no Debian packages, no
# ../shared): .devdeps/ (GoogleTest, nlohmann json, CLI11 via ../shared/tools/device-deps.sh,
# plus PCRE2's headers and static library) and .gpu-models/models (the shared models the
# tests read). Both are git-ignored; name them in the device run's `carry`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
../shared/tools/device-deps.sh
# PCRE2 (tokenizer pre-split regexes): headers and static library, no .pc file (its
# prefix=/usr would point the GPU build at headers that are not there).
dpkg -L libpcre2-dev | while read -r f; do
  case "$f" in
    *.h|*/libpcre2-8.a) mkdir -p ".devdeps$(dirname "$f")" && cp -p "$f" ".devdeps$f" ;;
  esac
done
grep -qx '/.gpu-models/' .git/info/exclude 2>/dev/null || echo '/.gpu-models/' >> .git/info/exclude
rm -rf .gpu-models && mkdir -p .gpu-models/models
# The 64 MiB carry limit: the vocab-only GGUFs (18 MB) stay behind unless asked for.
for item in README.md stories260K.gguf llama-2-tiny-random.gguf quant-ref reference ${GPU_EXTRA_MODELS:-}; do
  cp -r "../shared/models/$item" .gpu-models/models/
done
du -sh .devdeps .gpu-models | sed 's/^/packed /'
