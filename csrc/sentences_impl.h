// Template body of for_each_sentence (included by sentences.h).
#pragma once

#include "ascii.h"

namespace convirt {
namespace detail {

// Collapse whitespace runs to one space and strip the ends, into `out`.
inline void collapse_whitespace(std::string_view text, std::string& out) {
  out.clear();
  bool pending_space = false;
  for (char c : text) {
    if (ascii::is_ws(c)) {
      pending_space = !out.empty();
    } else {
      if (pending_space) out.push_back(' ');
      pending_space = false;
      out.push_back(c);
    }
  }
}

bool is_blank_line_break(std::string_view text, size_t p);
bool is_abbreviation(std::string_view text, size_t start, size_t dot);
bool at_line_start(std::string_view text, size_t p);
// A list marker "12. " or "3) " at p: its number and end, or false.
bool list_marker_at(std::string_view text, size_t p, int& number, size_t& end);

inline bool is_closer(char c) { return c == ')' || c == ']' || c == '"' || c == '\''; }

}  // namespace detail

template <typename Sink>
void for_each_sentence(std::string_view text, std::string& scratch, Sink&& sink) {
  using namespace ascii;
  const size_t n = text.size();
  size_t start = 0;             // where the current sentence's text begins
  int list_number = 0;          // last list marker's number since the last blank line
  long long last_content = -1;  // last non-whitespace position stepped over

  auto emit = [&](size_t end) {
    detail::collapse_whitespace(text.substr(start, end - start), scratch);
    if (!scratch.empty() && count_tokens(scratch) > 0) sink(std::string_view(scratch));
  };

  size_t p = 0;
  while (p < n) {
    const char c = text[p];
    if (c == '\n' && detail::is_blank_line_break(text, p)) {
      emit(p);
      start = p + 1;
      list_number = 0;
      ++p;
      continue;
    }
    if (is_digit(c) && (p == 0 || is_ws(text[p - 1]))) {
      int number;
      size_t end;
      if (detail::list_marker_at(text, p, number, end)) {
        const bool sentence_empty = last_content < static_cast<long long>(start);
        if (sentence_empty || detail::at_line_start(text, p) ||
            (list_number && number == list_number + 1)) {
          emit(p);
          start = end;
          list_number = number;
          p = end;
          continue;
        }
      }
    }
    if (c == '.' || c == '!' || c == '?') {
      size_t j = p + 1;
      while (j < n && detail::is_closer(text[j])) ++j;
      if (j == n || is_ws(text[j])) {
        if (c == '.' && detail::is_abbreviation(text, start, p)) {
          last_content = static_cast<long long>(p);
          ++p;
          continue;
        }
        emit(j);
        start = j;
        p = j;
        continue;
      }
    }
    if (!is_ws(c)) last_content = static_cast<long long>(p);
    ++p;
  }
  emit(n);
}

}  // namespace convirt
