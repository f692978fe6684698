// When the CPU kernels write an output with streaming (non-temporal) stores.
#pragma once

#include <cstdint>

namespace mnv3 {
namespace cpu {

// Whether an output of `bytes` written by `threads` threads should go out as streaming stores.
bool stream_output(int64_t bytes, int64_t threads);

// Tests: outputs of at least `bytes` stream whatever the caches (so the streaming paths run on
// any host); a negative value restores the rule.
void set_stream_threshold(int64_t bytes);

}  // namespace cpu
}  // namespace mnv3
