#include "engine/stages.h"

namespace lockstep::engine {

// The table's order is the enum's order: stage_info() indexes by enum value.
static_assert([] {
  for (size_t i = 0; i < kStages.size(); ++i)
    if (static_cast<size_t>(kStages[i].stage) != i) return false;
  return true;
}());

}  // namespace lockstep::engine
