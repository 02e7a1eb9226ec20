#pragma once
// `lockstep inspect`: what a model file or a dump holds, as a JSON report (the one source)
// and as text rendered from that report.

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

namespace lockstep::engine {

enum class InputKind { Gguf, Safetensors, DumpDir, AprtFile, NpyFile };

// Decides by content (magic bytes) for files and by layout for directories. A directory
// holding *.safetensors (a HF model folder) is Safetensors; any other directory is a dump.
// Throws lockstep::Error naming the path when it is none of these.
InputKind detect_input(const std::filesystem::path& path);

// Report schema ("kind" tells which of the other keys exist):
//   {"path", "kind": "gguf"|"safetensors"|"dump"|"aprt"|"npy", "file_bytes",
//    "model": {"architecture", "name", "hyperparameters": {...}, "metadata": {...}},
//    "tokenizer": {...}, "tensors": [{"name","type","shape","bytes","offset"}],
//    "cells": [{"stage","layer","elements","shape","path"}], "issues": [{...}]}
// Shapes are listed outermost first (NumPy order); GGUF's own ggml order is "ggml_dims".
nlohmann::json inspect(const std::filesystem::path& path);
std::string render_inspect_text(const nlohmann::json& report);

// Writes one tensor of a GGUF or safetensors model, dequantized to f32, as NPY (NumPy
// order); or one cell of a dump ("layer-3/attn_norm" or "lm_head"). Returns the shape.
std::vector<uint64_t> export_tensor_npy(const std::filesystem::path& input,
                                        const std::string& tensor,
                                        const std::filesystem::path& out);

}  // namespace lockstep::engine
