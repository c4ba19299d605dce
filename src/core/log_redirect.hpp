// Where informational log lines go (core/log.hpp): stdout by default, or stderr for a
// subcommand whose stdout is its result (`generate`'s text).
#pragma once

namespace st {

void set_info_log_to_stderr(bool on);

}  // namespace st
