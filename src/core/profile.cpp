#include "core/profile.hpp"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <utility>
#include <vector>

#include "core/log.hpp"
#include "core/timer.hpp"

namespace st {

namespace {
struct Entry {
  double seconds = 0;
  int64_t calls = 0;
};
std::map<std::string, Entry>& totals() {
  static std::map<std::string, Entry> t;
  return t;
}
void (*g_sync)() = nullptr;
int g_depth = 0;  // only the outermost scope is timed (ops calling ops are not double-counted)
}  // namespace

int profile_level() {
  static const int level = [] {
    const char* e = std::getenv("SHARDTUNE_PROFILE");
    return e && (e[0] == '1' || e[0] == '2') && e[1] == '\0' ? e[0] - '0' : 0;
  }();
  return level;
}
bool profiling_enabled() { return profile_level() > 0; }

void set_profile_sync_hook(void (*sync)()) { g_sync = sync; }
void device_synchronize(Device d) {
  if (d == Device::cuda && g_sync) g_sync();
}

ProfileScope::ProfileScope(const char* name, Device device) : device_(device) {
  if (!profiling_enabled() || !name) return;  // off: no string is built
  name_ = name;
  enter();
}

void ProfileScope::enter() {
  counted_ = true;
  if (g_depth++ > 0) return;
  active_ = true;
  if (device_ == Device::cuda && g_sync) g_sync();
  start_ = now_seconds();
}

ProfileScope::~ProfileScope() {
  if (!counted_) return;
  --g_depth;
  if (!active_) return;
  if (device_ == Device::cuda && g_sync) g_sync();
  Entry& e = totals()[name_];
  e.seconds += now_seconds() - start_;
  e.calls++;
}

void profile_reset() { totals().clear(); }

void profile_report(int64_t steps) {
  if (!profiling_enabled() || totals().empty()) return;
  std::vector<std::pair<std::string, Entry>> rows(totals().begin(), totals().end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
  double total = 0;
  for (const auto& r : rows) total += r.second.seconds;
  const double per = steps > 0 ? static_cast<double>(steps) : 1.0;
  ST_LOG("profile (SHARDTUNE_PROFILE=1; device synchronised around each op), per step over ", steps, " steps:");
  ST_LOG(str("  ", std::string(28, ' '), "   ms/step   share   calls/step"));
  for (const auto& [name, e] : rows) {
    char line[160];
    std::snprintf(line, sizeof(line), "  %-28s %9.2f  %5.1f%%  %9.1f", name.c_str(), 1e3 * e.seconds / per,
                  100.0 * e.seconds / total, static_cast<double>(e.calls) / per);
    ST_LOG(line);
  }
  char line[160];
  std::snprintf(line, sizeof(line), "  %-28s %9.2f", "total in ops", 1e3 * total / per);
  ST_LOG(line);
}

}  // namespace st
