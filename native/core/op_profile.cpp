#include "core/op_profile.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace plm {
namespace {

struct Totals {
  std::mutex mu;
  std::map<std::string, std::pair<double, long>> by_name;  // name -> (ms, calls)
  ~Totals() {
    if (by_name.empty()) return;
    std::vector<std::pair<std::string, std::pair<double, long>>> rows(by_name.begin(), by_name.end());
    std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
    double total = 0;
    for (const auto& r : rows) total += r.second.first;
    std::fprintf(stderr, "plm profile (PLM_PROFILE=1): op, total ms, calls, share\n");
    for (const auto& r : rows)
      std::fprintf(stderr, "  %-28s %10.1f %7ld %6.1f%%\n", r.first.c_str(), r.second.first, r.second.second,
                   100.0 * r.second.first / total);
  }
};

Totals& totals() {
  static Totals t;
  return t;
}

}  // namespace

bool op_profile_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("PLM_PROFILE");
    return e && *e && std::string(e) != "0";
  }();
  return on;
}

void op_profile_add(const char* name, double ms) {
  Totals& t = totals();
  std::lock_guard<std::mutex> lock(t.mu);
  auto& e = t.by_name[name];
  e.first += ms;
  e.second += 1;
}

}  // namespace plm
