#include "formats/json_util.h"

#include <cmath>

#include "formats/error.h"

namespace lockstep::formats {

using nlohmann::json;

json parse_json_document(std::string_view text, const std::string& name, int max_depth,
                         uint64_t base, std::string_view what) {
  try {
    return json::parse(text.begin(), text.end(), [&](int depth, json::parse_event_t, json&) {
      if (depth > max_depth)
        throw Error(
            name, base,
            std::string(what) + " nested at most " + std::to_string(max_depth) + " levels deep",
            "deeper nesting");
      return true;
    });
  } catch (const json::parse_error& e) {
    throw Error(name, base + (e.byte > 0 ? e.byte - 1 : 0), std::string(what), e.what());
  } catch (const json::exception& e) {
    // out_of_range (a number too large for any JSON number type) and friends.
    throw Error(name, base, std::string(what), e.what());
  }
}

const char* json_type_name(const json& j) {
  switch (j.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::number_integer:
      return "a negative integer";
    case json::value_t::number_unsigned:
      return "an integer";
    case json::value_t::number_float:
      return "a floating-point number";
    case json::value_t::string:
      return "a string";
    case json::value_t::array:
      return "an array";
    case json::value_t::object:
      return "an object";
    default:
      return "an unsupported value";
  }
}

json json_number(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return v;
}

json json_numbers(const std::vector<double>& v) {
  json j = json::array();
  for (double x : v) j.push_back(json_number(x));
  return j;
}

}  // namespace lockstep::formats
