// The sentence index: report -> sentences in CSR layout over one UTF-8 buffer, built once for a
// corpus (multi-threaded), saved, and memory-mapped for training; plus the sampler that picks
// one sentence per report as a pure function of (seed, epoch, report id, draw).
//
// File format (little-endian; reference.py reads and writes the same bytes):
//   header (48 bytes): magic "CVXSIDX\0", u32 version, u32 min_tokens, u64 num_reports,
//                      u64 num_sentences, u64 text_bytes, u64 FNV-1a-64 of the text
//   i64 report_offsets[num_reports + 1]     report r's sentences are [ro[r], ro[r+1])
//   i64 sentence_offsets[num_sentences + 1] sentence s is text[so[s], so[s+1])
//   u8  text[text_bytes]
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace convirt {

// A file that is not a sentence index, or is truncated or corrupt.
class IndexFormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

uint64_t fnv1a64(std::string_view data);

// The splitmix64 finaliser: every seeded choice of the data pipeline chains it.
uint64_t splitmix64(uint64_t x);

// Which of `count` (> 0) sentences a report gets: uniform, from a 64-bit hash of its key.
int64_t sample_choice(uint64_t seed, uint64_t epoch, uint64_t report_id, uint64_t draw, int64_t count);

class SentenceIndex {
 public:
  // threads = 0: all hardware threads. sections: extract Findings/Impression first.
  static SentenceIndex build(const std::vector<std::string_view>& reports, int threads,
                             int min_tokens, bool sections);
  static SentenceIndex load(const std::string& path, bool verify);
  void save(const std::string& path) const;  // atomic: temporary file, fsync, rename

  int64_t num_reports() const { return num_reports_; }
  int64_t num_sentences() const { return num_sentences_; }
  int min_tokens() const { return min_tokens_; }
  int64_t first_sentence(int64_t report) const { return report_offsets_[report]; }
  int64_t sentence_count(int64_t report) const {
    return report_offsets_[report + 1] - report_offsets_[report];
  }
  std::string_view sentence(int64_t s) const {
    return {text_ + sentence_offsets_[s],
            static_cast<size_t>(sentence_offsets_[s + 1] - sentence_offsets_[s])};
  }
  std::vector<int64_t> empty_report_ids() const;

  // out[i] = global sentence id for report_ids[i]. Throws std::out_of_range for a bad id and
  // std::invalid_argument for a report with no sentence.
  void sample_ids(const int64_t* report_ids, size_t n, uint64_t seed, uint64_t epoch,
                  uint64_t draw, int64_t* out) const;

 private:
  struct Owned {
    std::vector<int64_t> report_offsets, sentence_offsets;
    std::string text;
  };
  void point_at(std::shared_ptr<const Owned> owned);

  int64_t num_reports_ = 0, num_sentences_ = 0;
  int min_tokens_ = 0;
  const int64_t* report_offsets_ = nullptr;
  const int64_t* sentence_offsets_ = nullptr;
  const char* text_ = nullptr;
  uint64_t text_bytes_ = 0;
  // What the pointers above point into: a built index's buffers or a read-only mapping of a
  // file. Held by a shared pointer, so copies and moves never leave the pointers dangling.
  std::shared_ptr<const void> storage_;
};

}  // namespace convirt
