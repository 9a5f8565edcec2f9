// SPDX-License-Identifier: Apache-2.0
// libFuzzer entry point of one fuzz-* target: DQ_FUZZ_ENTRY names the harness
// function (tests/fuzz/CMakeLists.txt sets it per executable).
#include "tests/fuzz/fuzz_targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return dockquota::fuzz::DQ_FUZZ_ENTRY(data, size);
}
