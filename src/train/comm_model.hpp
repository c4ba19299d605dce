// The communication model: the time of one NCCL collective over a group of GPUs,
//   t = latency + size x factor / bus bandwidth,
// with nccl-tests' definitions (PERFORMANCE.md in NVIDIA/nccl-tests): size is the buffer of the
// collective (all-gather: the gathered output, reduce-scatter: the input), algbw = size / t and
// busbw = algbw x factor with factor 2(n-1)/n for all-reduce, (n-1)/n for all-gather and
// reduce-scatter, 1 for broadcast: the bandwidth each link of a ring carries, comparable with
// the hardware's.
//
// Bus bandwidths per link kind are documented figures (comm_model.cpp names them) or measured
// (`jobs/measure_comm.sh` -> `shardtune calibrate --comm`, read with --comm-profile). Latency
// follows NCCL's own tuning model for ring / Simple (src/graph/tuning.cc): a base of 8.4 us plus
// one hop latency per step (NVLink 3.4 us, PCIe 5.7, network 9.6), 2(n-1) steps for all-reduce,
// n-1 for all-gather and reduce-scatter.
#pragma once

#include <string>
#include <vector>

#include "core/op_trace.hpp"

namespace st {

enum class LinkKind { nvlink3, nvlink4, pcie4, pcie5 };           // inside a node
enum class NetKind { ib_hdr, ib_ndr, roce_100, roce_200, roce_400 };  // between nodes
LinkKind parse_link_kind(const std::string& name, const std::string& what);
NetKind parse_net_kind(const std::string& name, const std::string& what);
const char* link_kind_name(LinkKind k);
const char* net_kind_name(NetKind k);

// A measured collective: its latency and bus bandwidth for groups of `ranks` over `nodes`.
struct MeasuredCollective {
  CollectiveKind kind = CollectiveKind::all_reduce;
  int ranks = 2, nodes = 1;
  double latency_s = 0, bus_bytes_per_s = 0;
};

struct CommModel {
  LinkKind link = LinkKind::nvlink4;
  NetKind net = NetKind::ib_ndr;
  int gpus_per_node = 8;
  std::vector<MeasuredCollective> measured;  // used first where (kind, ranks, nodes) match
  std::string source;                        // of the measured entries

  // Bus bandwidth (bytes/s) inside one node, and of one NIC between nodes.
  double intra_bus_bytes_per_s() const;
  double net_bytes_per_s() const;
  // Seconds of one collective of `bytes` (nccl-tests' size) over a group of `ranks` spread over
  // `nodes` nodes (ranks / nodes per node).
  double collective_seconds(CollectiveKind kind, double bytes, int ranks, int nodes) const;
};

// nccl-tests' bus-bandwidth factor of a collective over n ranks.
double bus_factor(CollectiveKind kind, int n);

// The measured-collectives file (format "shardtune-comm-profile", version 1):
//   { "format": "shardtune-comm-profile", "version": 1, "source": "...",
//     "collectives": [ { "collective": "all_reduce", "ranks": 8, "nodes": 1,
//                        "latency_s": 2.1e-5, "bus_bytes_per_s": 2.2e11 }, ... ] }
// InputError naming the file and the field on anything wrong.
std::vector<MeasuredCollective> parse_comm_profile(const std::string& text, const std::string& what, std::string* source);
std::vector<MeasuredCollective> read_comm_profile(const std::string& path, std::string* source);
std::string comm_profile_to_json(const std::vector<MeasuredCollective>& m, const std::string& source);

// Least-squares fit of t = latency + size x factor / busbw to (size, seconds) samples of one
// collective (latency clamped at >= 0).
MeasuredCollective fit_collective(CollectiveKind kind, int ranks, int nodes,
                                  const std::vector<std::pair<double, double>>& size_seconds);

}  // namespace st
