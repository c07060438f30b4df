#include "sections.h"

#include <array>

#include "ascii.h"

namespace convirt {
namespace {

using namespace ascii;

// Keep these lists equal to KEPT_SECTIONS / BOILERPLATE_SECTIONS in reference.py.
constexpr std::array<std::string_view, 9> kKeptSections = {
    "FINDINGS",           "FINDING",    "IMPRESSION",  "IMPRESSIONS", "FINDINGS AND IMPRESSION",
    "FINDINGS AND IMPRESSIONS", "FINDINGS IMPRESSION", "CONCLUSION", "CONCLUSIONS"};
constexpr std::array<std::string_view, 20> kBoilerplateSections = {
    "EXAMINATION",       "EXAM",           "TYPE OF EXAMINATION",  "INDICATION",
    "INDICATIONS",       "HISTORY",        "CLINICAL HISTORY",     "CLINICAL INFORMATION",
    "CLINICAL INDICATION", "REASON FOR EXAM", "REASON FOR EXAMINATION", "TECHNIQUE",
    "COMPARISON",        "COMPARISONS",    "NOTIFICATION",         "RECOMMENDATION",
    "RECOMMENDATIONS",   "WET READ",       "PROCEDURE",            "ADDENDUM"};
constexpr size_t kMaxHeaderWords = 6;  // longer all-caps lines are text, not headers
constexpr std::string_view kFinalReportLine = "FINAL REPORT";

template <size_t N>
bool contains(const std::array<std::string_view, N>& names, std::string_view name) {
  for (auto n : names)
    if (n == name) return true;
  return false;
}

bool is_kept(std::string_view name) { return contains(kKeptSections, name); }
bool is_boilerplate(std::string_view name) { return contains(kBoilerplateSections, name); }

bool is_header_separator(char c) { return c == ' ' || c == '\t' || c == '/' || c == '&' || c == '-'; }

struct HeaderMatch {
  std::string name;
  bool all_caps = true;
  size_t letters = 0;
  size_t end = 0;  // index after the colon
};

// Words of a header candidate starting at p (a letter), up to and including its colon.
bool match_header(std::string_view text, size_t p, HeaderMatch& m) {
  const size_t n = text.size();
  size_t words = 0, i = p;
  m.name.clear();
  m.all_caps = true;
  m.letters = 0;
  while (true) {
    size_t j = i;
    while (j < n && is_alpha(text[j])) {
      if (text[j] >= 'a' && text[j] <= 'z') m.all_caps = false;
      ++j;
    }
    if (words) m.name.push_back(' ');
    for (size_t q = i; q < j; ++q) m.name.push_back(upper(text[q]));
    m.letters += j - i;
    ++words;
    size_t k = j;
    while (k < n && is_header_separator(text[k])) ++k;
    if (k < n && text[k] == ':') {
      m.end = k + 1;
      return true;
    }
    if (k > j && k < n && is_alpha(text[k]) && words < kMaxHeaderWords) {
      i = k;
      continue;
    }
    return false;
  }
}

bool at_line_start(std::string_view text, size_t p) {
  size_t i = p;
  while (i > 0 && is_horizontal_ws(text[i - 1])) --i;
  return i == 0 || text[i - 1] == '\n';
}

bool is_header(const HeaderMatch& m, bool line_start) {
  if (is_kept(m.name)) return true;
  if (is_boilerplate(m.name)) return line_start || m.all_caps;
  return line_start && m.all_caps && m.letters >= 3;
}

std::string drop_final_report_lines(std::string_view text) {
  std::string out;
  size_t line_start = 0;
  bool first = true;
  while (line_start <= text.size()) {
    size_t nl = text.find('\n', line_start);
    size_t line_end = nl == std::string_view::npos ? text.size() : nl;
    std::string_view line = text.substr(line_start, line_end - line_start);
    std::string_view stripped = strip(line);
    bool is_title = stripped.size() == kFinalReportLine.size();
    for (size_t q = 0; is_title && q < stripped.size(); ++q)
      is_title = upper(stripped[q]) == kFinalReportLine[q];
    if (!is_title) {
      if (!first) out.push_back('\n');
      out.append(line);
      first = false;
    }
    if (nl == std::string_view::npos) break;
    line_start = nl + 1;
  }
  return out;
}

}  // namespace

std::vector<SectionHeader> find_headers(std::string_view text) {
  std::vector<SectionHeader> headers;
  const size_t n = text.size();
  HeaderMatch m;
  size_t p = 0;
  while (p < n) {
    if (is_alpha(text[p]) && (p == 0 || !is_alnum(text[p - 1]))) {
      if (match_header(text, p, m) && is_header(m, at_line_start(text, p))) {
        headers.push_back({m.name, p, m.end});
        p = m.end;
        continue;
      }
      while (p < n && is_alpha(text[p])) ++p;  // not a header here: try the next word
      continue;
    }
    ++p;
  }
  return headers;
}

std::string extract_sections(std::string_view report) {
  const auto headers = find_headers(report);
  std::vector<std::string_view> kept;
  bool has_kept_section = false;
  for (size_t k = 0; k < headers.size(); ++k) {
    size_t body_end = k + 1 < headers.size() ? headers[k + 1].header_start : report.size();
    auto body = strip(report.substr(headers[k].body_start, body_end - headers[k].body_start));
    if (is_kept(headers[k].name)) {
      has_kept_section = true;
      kept.push_back(body);
    }
  }
  std::string preamble;
  if (!has_kept_section) {
    // Fallback: what is not header boilerplate.
    size_t preamble_end = headers.empty() ? report.size() : headers[0].header_start;
    preamble = drop_final_report_lines(report.substr(0, preamble_end));
    kept.push_back(strip(preamble));
    for (size_t k = 0; k < headers.size(); ++k) {
      if (is_boilerplate(headers[k].name)) continue;
      size_t body_end = k + 1 < headers.size() ? headers[k + 1].header_start : report.size();
      kept.push_back(strip(report.substr(headers[k].body_start, body_end - headers[k].body_start)));
    }
  }
  std::string out;
  for (auto body : kept) {
    if (body.empty()) continue;
    if (!out.empty()) out.append("\n\n");
    out.append(body);
  }
  return out;
}

}  // namespace convirt
