#pragma once
// JSON from untrusted files (manifests, safetensors headers, HF configs): one parser entry
// that bounds nesting and turns every nlohmann exception into a lockstep::Error.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace lockstep::formats {

// Parses `text`, whose first byte sits at file offset `base`. Nesting deeper than
// `max_depth`, malformed text and out-of-range numbers all throw lockstep::Error naming
// `name` and, where nlohmann reports one, the offending byte's offset. `what` describes the
// document in the error ("well-formed JSON", "a well-formed JSON header").
nlohmann::json parse_json_document(std::string_view text, const std::string& name,
                                   int max_depth, uint64_t base = 0,
                                   std::string_view what = "well-formed JSON");

// "an integer", "a string", ...: the JSON type of a value, for error messages.
const char* json_type_name(const nlohmann::json& j);

// Numbers for the reports Lockstep writes: JSON has no NaN or infinity, so they become the
// strings "nan", "inf" and "-inf".
nlohmann::json json_number(double v);
nlohmann::json json_numbers(const std::vector<double>& v);

}  // namespace lockstep::formats
