#include "formats/error.h"

#include <gtest/gtest.h>

namespace lockstep {
namespace {

TEST(Error, NamesFileOffsetAndExpectation) {
  Error e("model.gguf", 24, "tensor count <= 1048576", "4294967296");
  EXPECT_STREQ(e.what(), "model.gguf: at offset 24: expected tensor count <= 1048576, found 4294967296");
  EXPECT_EQ(e.file(), "model.gguf");
  EXPECT_EQ(e.offset(), 24u);
}

TEST(Error, OmitsMissingOffset) {
  Error e("dump", Error::kNoOffset, "a directory");
  EXPECT_STREQ(e.what(), "dump: expected a directory");
}

}  // namespace
}  // namespace lockstep
