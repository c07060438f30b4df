// ASCII character classes shared by the text ops.
//
// Every decision of the text ops looks at ASCII bytes only; a UTF-8 byte >= 0x80 is never
// whitespace, never a letter of a header and always word content. That is what makes this
// byte-level code agree with the code-point-level Python reference on any Unicode text.
#pragma once

#include <string_view>

namespace convirt::ascii {

inline bool is_ws(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
inline bool is_horizontal_ws(char c) { return is_ws(c) && c != '\n'; }
inline bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
inline bool is_digit(char c) { return c >= '0' && c <= '9'; }
inline bool is_alnum(char c) { return is_alpha(c) || is_digit(c); }
inline bool is_non_ascii(char c) { return static_cast<unsigned char>(c) >= 0x80; }
inline char upper(char c) { return (c >= 'a' && c <= 'z') ? static_cast<char>(c - 32) : c; }
inline char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }

inline std::string_view strip(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && is_ws(s[b])) ++b;
  while (e > b && is_ws(s[e - 1])) --e;
  return s.substr(b, e - b);
}

}  // namespace convirt::ascii
