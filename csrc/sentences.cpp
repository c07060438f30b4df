#include "sentences.h"

#include <array>

namespace convirt {
namespace {

using namespace ascii;

// Keep equal to ABBREVIATIONS in reference.py: tokens (lower-case, without the final '.')
// after which a full stop does not end a sentence.
constexpr std::array<std::string_view, 14> kAbbreviations = {
    "e.g", "i.e", "approx", "vs", "dr", "mr", "mrs", "ms", "st", "fig", "cf", "incl", "a.m", "p.m"};
constexpr size_t kMaxMarkerDigits = 2;

bool is_placeholder(std::string_view core) {
  if (core.size() < 3) return false;
  for (char c : core)
    if (c != 'X') return false;
  return true;
}

bool counts_as_token(std::string_view token) {
  bool has_content = false;
  for (char c : token) has_content |= is_alnum(c) || is_non_ascii(c);
  if (!has_content) return false;
  size_t b = 0, e = token.size();
  while (b < e && !is_non_ascii(token[b]) && !is_alnum(token[b])) ++b;
  while (e > b && !is_non_ascii(token[e - 1]) && !is_alnum(token[e - 1])) --e;
  return !is_placeholder(token.substr(b, e - b));
}

}  // namespace

int count_tokens(std::string_view sentence) {
  int count = 0;
  size_t i = 0;
  const size_t n = sentence.size();
  while (i < n) {
    while (i < n && is_ws(sentence[i])) ++i;
    size_t j = i;
    while (j < n && !is_ws(sentence[j])) ++j;
    if (j > i && counts_as_token(sentence.substr(i, j - i))) ++count;
    i = j;
  }
  return count;
}

namespace detail {

bool is_blank_line_break(std::string_view text, size_t p) {
  size_t j = p + 1;
  while (j < text.size() && is_horizontal_ws(text[j])) ++j;
  return j < text.size() && text[j] == '\n';
}

bool at_line_start(std::string_view text, size_t p) {
  size_t i = p;
  while (i > 0 && is_horizontal_ws(text[i - 1])) --i;
  return i == 0 || text[i - 1] == '\n';
}

bool is_abbreviation(std::string_view text, size_t start, size_t dot) {
  size_t i = dot;
  while (i > start && !is_ws(text[i - 1])) --i;
  while (i < dot && (text[i] == '(' || text[i] == '[' || text[i] == '"' || text[i] == '\'')) ++i;
  const size_t len = dot - i;
  for (auto abbreviation : kAbbreviations) {
    if (abbreviation.size() != len) continue;
    bool equal = true;
    for (size_t q = 0; q < len && equal; ++q) equal = lower(text[i + q]) == abbreviation[q];
    if (equal) return true;
  }
  return false;
}

bool list_marker_at(std::string_view text, size_t p, int& number, size_t& end) {
  const size_t n = text.size();
  size_t j = p;
  while (j < n && j - p < kMaxMarkerDigits + 1 && is_digit(text[j])) ++j;
  const size_t digits = j - p;
  if (digits == 0 || digits > kMaxMarkerDigits) return false;
  if (j < n && (text[j] == '.' || text[j] == ')') && (j + 1 == n || is_ws(text[j + 1]))) {
    number = 0;
    for (size_t q = p; q < j; ++q) number = number * 10 + (text[q] - '0');
    end = j + 1;
    return true;
  }
  return false;
}

}  // namespace detail

std::vector<std::string> split_sentences(std::string_view text) {
  std::vector<std::string> out;
  std::string scratch;
  for_each_sentence(text, scratch, [&](std::string_view s) { out.emplace_back(s); });
  return out;
}

}  // namespace convirt
