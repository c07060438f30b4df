// Section extraction for radiology reports: keep FINDINGS and IMPRESSION.
// The rules are documented once, in convirt_fast/text/reference.py (find_headers,
// extract_sections); this is the same algorithm over UTF-8 bytes.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace convirt {

struct SectionHeader {
  std::string name;   // upper-case words joined by single spaces, e.g. "FINDINGS AND IMPRESSION"
  size_t header_start;
  size_t body_start;  // just after the colon
};

std::vector<SectionHeader> find_headers(std::string_view text);

// The kept sections' bodies, stripped, joined by "\n\n"; the fallback when there is none.
std::string extract_sections(std::string_view report);

}  // namespace convirt
