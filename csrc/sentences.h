// Sentence splitting tuned for radiology reports, and the token count behind the paper's
// "fewer than 3 tokens" filter. Rules: convirt_fast/text/reference.py (split_sentences,
// count_tokens); this is the same algorithm over UTF-8 bytes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace convirt {

// Words that carry content: whitespace-separated pieces with a letter, a digit or a non-ASCII
// character, de-identification placeholders ("___", "XXXX") excluded.
int count_tokens(std::string_view sentence);

// Calls sink(sentence) for each sentence (whitespace collapsed, at least one counted token).
// `scratch` is reused between calls to avoid allocations.
template <typename Sink>
void for_each_sentence(std::string_view text, std::string& scratch, Sink&& sink);

std::vector<std::string> split_sentences(std::string_view text);

}  // namespace convirt

#include "sentences_impl.h"
