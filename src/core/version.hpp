// What this binary is: version, the git commit it was built from and the build's flags, embedded
// at build time by the Makefile (a generated header, rewritten only when its text changes, so a
// new commit recompiles one file). `shardtune --version` prints them; metrics.h5 stores them.
#pragma once

#include <string>

namespace st {

const char* shardtune_version();      // "0.6.0"
const char* shardtune_commit();       // git commit (12 hex digits, "-dirty" with local changes) or "unknown"
const char* shardtune_build_flags();  // "cuda=1 archs=80,90 debug=0 march=x86-64-v3 cxx=g++ 12.2.0 ..."
// "shardtune 0.6.0 (commit abc123def456; cuda=1 ...)"
std::string version_line();

}  // namespace st
