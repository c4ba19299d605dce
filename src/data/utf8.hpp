// Strict UTF-8 validation (RFC 3629): rejects overlong forms, UTF-16 surrogates (U+D800..DFFF),
// code points above U+10FFFF, stray continuation bytes and truncated sequences.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace st {

// True when `s` is valid UTF-8. On failure, *error_offset (if given) is the byte offset of the
// first byte of the offending sequence.
bool utf8_valid(std::string_view s, size_t* error_offset = nullptr);

// Drops a leading UTF-8 byte-order mark (EF BB BF), if any.
std::string_view strip_utf8_bom(std::string_view s);

}  // namespace st
