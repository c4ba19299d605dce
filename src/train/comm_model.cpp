#include "train/comm_model.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.hpp"

namespace st {

namespace {

// Unidirectional link bandwidth per GPU (bytes/s), from the specifications:
//  nvlink3: A100 SXM4, 12 links, 600 GB/s bidirectional (A100 datasheet) -> 300 GB/s each way;
//  nvlink4: H100/H200 SXM, 18 links, 900 GB/s bidirectional (H100 datasheet) -> 450 GB/s;
//  pcie4 x16: 16 GT/s x 16 lanes, 128b/130b -> 31.5 GB/s; pcie5 x16: 63 GB/s;
//  ib_hdr 200 Gb/s, ib_ndr 400 Gb/s, roce 100/200/400 Gb/s per NIC (one NIC per GPU assumed, as
//  on DGX/HGX nodes).
struct Link {
  const char* name;
  double bytes_per_s;
};
const Link kLinks[] = {{"nvlink3", 300e9}, {"nvlink4", 450e9}, {"pcie4", 31.5e9}, {"pcie5", 63e9}};
const Link kNets[] = {{"ib-hdr", 25e9}, {"ib-ndr", 50e9}, {"roce-100", 12.5e9}, {"roce-200", 25e9}, {"roce-400", 50e9}};

// What NCCL rings reach of a link: NCCL's tuning model caps the A100 (sm80) ring bus bandwidth at
// 235 GB/s (src/graph/tuning.cc, `if (compCap80) busBw = std::min(busBw, 235.0f)`), 0.78 of
// NVLink3's 300 GB/s; the same fraction is assumed for every link kind.
constexpr double kBusFraction = 235.0 / 300.0;

// NCCL ring / Simple latency model (src/graph/tuning.cc): base 8.4 us, per step NVLink 3.4 us,
// PCIe 5.7 us, network 9.6 us.
constexpr double kBaseLatency = 8.4e-6, kNvlinkHop = 3.4e-6, kPciHop = 5.7e-6, kNetHop = 9.6e-6;

using json = nlohmann::json;

[[noreturn]] void bad(const std::string& what, const std::string& field, const std::string& why) {
  ST_THROW_INPUT(what, ": field '", field, "' ", why);
}

}  // namespace

LinkKind parse_link_kind(const std::string& name, const std::string& what) {
  for (size_t i = 0; i < std::size(kLinks); ++i)
    if (name == kLinks[i].name) return static_cast<LinkKind>(i);
  ST_THROW_INPUT(what, ": unknown link '", name, "' (nvlink3, nvlink4, pcie4, pcie5)");
}

NetKind parse_net_kind(const std::string& name, const std::string& what) {
  for (size_t i = 0; i < std::size(kNets); ++i)
    if (name == kNets[i].name) return static_cast<NetKind>(i);
  ST_THROW_INPUT(what, ": unknown network '", name, "' (ib-hdr, ib-ndr, roce-100, roce-200, roce-400)");
}

const char* link_kind_name(LinkKind k) { return kLinks[static_cast<size_t>(k)].name; }
const char* net_kind_name(NetKind k) { return kNets[static_cast<size_t>(k)].name; }

double bus_factor(CollectiveKind kind, int n) {
  if (n <= 1) return 0;
  switch (kind) {
    case CollectiveKind::all_reduce: return 2.0 * (n - 1) / n;
    case CollectiveKind::all_gather:
    case CollectiveKind::reduce_scatter: return static_cast<double>(n - 1) / n;
    case CollectiveKind::broadcast: return 1.0;
  }
  return 1.0;
}

double CommModel::intra_bus_bytes_per_s() const { return kLinks[static_cast<size_t>(link)].bytes_per_s * kBusFraction; }
double CommModel::net_bytes_per_s() const { return kNets[static_cast<size_t>(net)].bytes_per_s * kBusFraction; }

double CommModel::collective_seconds(CollectiveKind kind, double bytes, int ranks, int nodes) const {
  if (ranks <= 1) return 0;
  nodes = std::max(1, nodes);
  for (const MeasuredCollective& m : measured)
    if (m.kind == kind && m.ranks == ranks && m.nodes == nodes)
      return m.latency_s + bytes * bus_factor(kind, ranks) / m.bus_bytes_per_s;
  // Bus bandwidth: the intra-node link, or between nodes each of the group's GPUs in a node
  // drives its own NIC (one ring channel per NIC), whichever is slower.
  double bus = intra_bus_bytes_per_s();
  if (nodes > 1) bus = std::min(bus, net_bytes_per_s() * std::max(1, ranks / nodes));
  const bool nvlink = link == LinkKind::nvlink3 || link == LinkKind::nvlink4;
  const double intra_hop = nvlink ? kNvlinkHop : kPciHop;
  int steps = 1, inter_steps = nodes > 1 ? 1 : 0;
  if (kind == CollectiveKind::all_reduce) {
    steps = 2 * (ranks - 1);
    inter_steps = 2 * (nodes - 1);
  } else if (kind != CollectiveKind::broadcast) {
    steps = ranks - 1;
    inter_steps = nodes - 1;
  }
  const double latency = kBaseLatency + (steps - inter_steps) * intra_hop + inter_steps * kNetHop;
  return latency + bytes * bus_factor(kind, ranks) / bus;
}

MeasuredCollective fit_collective(CollectiveKind kind, int ranks, int nodes,
                                  const std::vector<std::pair<double, double>>& size_seconds) {
  if (size_seconds.size() < 2) ST_THROW("fit_collective: needs at least two sizes");
  // t = a + b x, x = size x factor; least squares over the samples.
  const double f = bus_factor(kind, ranks);
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  const double n = static_cast<double>(size_seconds.size());
  for (const auto& [s, t] : size_seconds) {
    const double x = s * f;
    sx += x;
    sy += t;
    sxx += x * x;
    sxy += x * t;
  }
  const double den = n * sxx - sx * sx;
  double b = den > 0 ? (n * sxy - sx * sy) / den : 0;
  double a = (sy - b * sx) / n;
  if (a < 0) {  // through the origin
    a = 0;
    b = sxx > 0 ? sxy / sxx : 0;
  }
  if (!(b > 0))
    ST_THROW_INPUT("fit_collective: ", collective_kind_name(kind), " over ", ranks,
                   " ranks: the times do not grow with the size (a busy machine?): measure again");
  MeasuredCollective m;
  m.kind = kind;
  m.ranks = ranks;
  m.nodes = nodes;
  m.latency_s = a;
  m.bus_bytes_per_s = 1.0 / b;
  return m;
}

std::vector<MeasuredCollective> parse_comm_profile(const std::string& text, const std::string& what, std::string* source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    ST_THROW_INPUT(what, ": not JSON (", e.what(), ")");
  }
  if (!j.is_object()) ST_THROW_INPUT(what, ": a communication profile is a JSON object");
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!std::set<std::string>{"format", "version", "source", "collectives"}.count(it.key()))
      bad(what, it.key(), "is not a field of a communication profile");
  if (!j.contains("format") || j["format"] != "shardtune-comm-profile") bad(what, "format", "must be \"shardtune-comm-profile\"");
  if (!j.contains("version") || !j["version"].is_number_integer() || j["version"].get<int>() != 1) bad(what, "version", "must be 1");
  if (!j.contains("source") || !j["source"].is_string()) bad(what, "source", "must be a string");
  if (source) *source = j["source"].get<std::string>();
  if (!j.contains("collectives") || !j["collectives"].is_array()) bad(what, "collectives", "must be an array");
  std::vector<MeasuredCollective> out;
  const json& cs = j["collectives"];
  for (size_t k = 0; k < cs.size(); ++k) {
    const std::string p = str("collectives[", k, "].");
    const json& c = cs[k];
    if (!c.is_object()) bad(what, str("collectives[", k, "]"), "must be an object");
    for (auto it = c.begin(); it != c.end(); ++it)
      if (!std::set<std::string>{"collective", "ranks", "nodes", "latency_s", "bus_bytes_per_s"}.count(it.key()))
        bad(what, p + it.key(), "is not a field of a measured collective");
    MeasuredCollective m;
    if (!c.contains("collective") || !c["collective"].is_string()) bad(what, p + "collective", "must be a string");
    const std::string name = c["collective"].get<std::string>();
    bool found = false;
    for (int i = 0; i < kNumCollectiveKinds; ++i)
      if (name == collective_kind_name(static_cast<CollectiveKind>(i))) {
        m.kind = static_cast<CollectiveKind>(i);
        found = true;
      }
    if (!found) bad(what, p + "collective", "must be all_reduce, all_gather, reduce_scatter or broadcast (got '" + name + "')");
    for (auto [key, dst] : {std::pair<const char*, int*>{"ranks", &m.ranks}, {"nodes", &m.nodes}}) {
      if (!c.contains(key) || !c[key].is_number_integer() || c[key].get<int>() < 1) bad(what, p + key, "must be a positive integer");
      *dst = c[key].get<int>();
    }
    if (m.ranks < 2) bad(what, p + "ranks", "must be at least 2");
    if (m.nodes > m.ranks) bad(what, p + "nodes", "must not exceed ranks");
    if (!c.contains("latency_s") || !c["latency_s"].is_number() || !(c["latency_s"].get<double>() >= 0))
      bad(what, p + "latency_s", "must be a non-negative number");
    if (!c.contains("bus_bytes_per_s") || !c["bus_bytes_per_s"].is_number() || !(c["bus_bytes_per_s"].get<double>() > 0))
      bad(what, p + "bus_bytes_per_s", "must be a positive number");
    m.latency_s = c["latency_s"].get<double>();
    m.bus_bytes_per_s = c["bus_bytes_per_s"].get<double>();
    out.push_back(m);
  }
  return out;
}

std::vector<MeasuredCollective> read_comm_profile(const std::string& path, std::string* source) {
  std::ifstream in(path);
  if (!in) ST_THROW_INPUT("communication profile ", path, ": cannot be read");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_comm_profile(ss.str(), "communication profile " + path, source);
}

std::string comm_profile_to_json(const std::vector<MeasuredCollective>& ms, const std::string& source) {
  json cs = json::array();
  for (const MeasuredCollective& m : ms)
    cs.push_back({{"collective", collective_kind_name(m.kind)}, {"ranks", m.ranks}, {"nodes", m.nodes},
                  {"latency_s", m.latency_s}, {"bus_bytes_per_s", m.bus_bytes_per_s}});
  json j = {{"format", "shardtune-comm-profile"}, {"version", 1}, {"source", source}, {"collectives", cs}};
  return j.dump(1) + "\n";
}

}  // namespace st
