#include "sentence_index.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>

#include "sections.h"
#include "sentences.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the sentence index file format is little-endian; this build assumes a little-endian host"
#endif

namespace convirt {
namespace {

constexpr char kMagic[8] = {'C', 'V', 'X', 'S', 'I', 'D', 'X', '\0'};
constexpr uint32_t kVersion = 1;

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t min_tokens;
  uint64_t num_reports;
  uint64_t num_sentences;
  uint64_t text_bytes;
  uint64_t text_checksum;
};
static_assert(sizeof(Header) == 48, "header layout must match reference.py's struct");

// One thread's share of a build: sentences of reports [begin, end).
struct Shard {
  std::string text;
  std::vector<int64_t> sentence_ends;   // relative to this shard's text
  std::vector<int64_t> report_counts;   // sentences per report
};

void build_shard(const std::vector<std::string_view>& reports, size_t begin, size_t end,
                 int min_tokens, bool sections, Shard& shard) {
  std::string scratch, extracted;
  shard.report_counts.reserve(end - begin);
  for (size_t r = begin; r < end; ++r) {
    std::string_view text = reports[r];
    if (sections) {
      extracted = extract_sections(text);
      text = extracted;
    }
    int64_t count = 0;
    for_each_sentence(text, scratch, [&](std::string_view sentence) {
      if (count_tokens(sentence) < min_tokens) return;
      shard.text.append(sentence);
      shard.sentence_ends.push_back(static_cast<int64_t>(shard.text.size()));
      ++count;
    });
    shard.report_counts.push_back(count);
  }
}

std::string errno_message(const std::string& what, const std::string& path) {
  return what + " " + path + ": " + std::strerror(errno);
}

void check_offsets(const std::string& path, const char* what, const int64_t* offsets,
                   uint64_t count, uint64_t last) {
  if (offsets[0] != 0 || static_cast<uint64_t>(offsets[count - 1]) != last)
    throw IndexFormatError(path + ": corrupt sentence index (" + what +
                           " offsets do not span 0.." + std::to_string(last) + ")");
  for (uint64_t i = 1; i < count; ++i)
    if (offsets[i] < offsets[i - 1])
      throw IndexFormatError(path + ": corrupt sentence index (" + what + " offsets decrease)");
}

}  // namespace

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

uint64_t fnv1a64(std::string_view data) {
  uint64_t h = 0xCBF29CE484222325ULL;
  for (unsigned char b : data) h = (h ^ b) * 0x100000001B3ULL;
  return h;
}

int64_t sample_choice(uint64_t seed, uint64_t epoch, uint64_t report_id, uint64_t draw,
                      int64_t count) {
  uint64_t key = splitmix64(seed);
  key = splitmix64(key ^ epoch);
  key = splitmix64(key ^ report_id);
  key = splitmix64(key ^ draw);
  // Multiply-shift maps the 64-bit hash to [0, count) (Lemire); bias < count / 2^64.
  return static_cast<int64_t>((static_cast<unsigned __int128>(key) * static_cast<uint64_t>(count)) >> 64);
}

void SentenceIndex::point_at(std::shared_ptr<const Owned> owned) {
  num_reports_ = static_cast<int64_t>(owned->report_offsets.size()) - 1;
  num_sentences_ = static_cast<int64_t>(owned->sentence_offsets.size()) - 1;
  report_offsets_ = owned->report_offsets.data();
  sentence_offsets_ = owned->sentence_offsets.data();
  text_ = owned->text.data();
  text_bytes_ = owned->text.size();
  storage_ = std::move(owned);
}

SentenceIndex SentenceIndex::build(const std::vector<std::string_view>& reports, int threads,
                                   int min_tokens, bool sections) {
  if (threads < 0) throw std::invalid_argument("threads must be >= 0 (0: all cores)");
  size_t n_threads = threads == 0 ? std::max(1u, std::thread::hardware_concurrency())
                                  : static_cast<size_t>(threads);
  n_threads = std::max<size_t>(1, std::min(n_threads, reports.size()));

  // Contiguous shards of about equal bytes, so that one long report does not idle the others.
  uint64_t total_bytes = 0;
  for (auto r : reports) total_bytes += r.size() + 1;
  std::vector<size_t> bounds{0};
  uint64_t acc = 0;
  for (size_t r = 0; r < reports.size() && bounds.size() < n_threads; ++r) {
    acc += reports[r].size() + 1;
    if (acc * n_threads >= total_bytes * bounds.size()) bounds.push_back(r + 1);
  }
  if (bounds.back() != reports.size()) bounds.push_back(reports.size());

  std::vector<Shard> shards(bounds.size() - 1);
  if (shards.size() == 1) {
    build_shard(reports, bounds[0], bounds[1], min_tokens, sections, shards[0]);
  } else {
    std::vector<std::thread> workers;
    std::vector<std::exception_ptr> errors(shards.size());
    for (size_t t = 0; t < shards.size(); ++t)
      workers.emplace_back([&, t] {
        try {
          build_shard(reports, bounds[t], bounds[t + 1], min_tokens, sections, shards[t]);
        } catch (...) {
          errors[t] = std::current_exception();
        }
      });
    for (auto& w : workers) w.join();
    for (auto& e : errors)
      if (e) std::rethrow_exception(e);
  }

  auto owned = std::make_shared<Owned>();
  size_t text_bytes = 0, sentences = 0;
  for (auto& s : shards) {
    text_bytes += s.text.size();
    sentences += s.sentence_ends.size();
  }
  owned->text.reserve(text_bytes);
  owned->sentence_offsets.reserve(sentences + 1);
  owned->report_offsets.reserve(reports.size() + 1);
  owned->sentence_offsets.push_back(0);
  owned->report_offsets.push_back(0);
  for (auto& s : shards) {
    const auto base = static_cast<int64_t>(owned->text.size());
    owned->text.append(s.text);
    for (auto e : s.sentence_ends) owned->sentence_offsets.push_back(base + e);
    for (auto c : s.report_counts)
      owned->report_offsets.push_back(owned->report_offsets.back() + c);
  }
  SentenceIndex index;
  index.min_tokens_ = min_tokens;
  index.point_at(std::move(owned));
  return index;
}

std::vector<int64_t> SentenceIndex::empty_report_ids() const {
  std::vector<int64_t> out;
  for (int64_t r = 0; r < num_reports_; ++r)
    if (report_offsets_[r] == report_offsets_[r + 1]) out.push_back(r);
  return out;
}

void SentenceIndex::sample_ids(const int64_t* report_ids, size_t n, uint64_t seed,
                               uint64_t epoch, uint64_t draw, int64_t* out) const {
  for (size_t i = 0; i < n; ++i) {
    const int64_t r = report_ids[i];
    if (r < 0 || r >= num_reports_)
      throw std::out_of_range("report id " + std::to_string(r) + " out of range for an index of " +
                              std::to_string(num_reports_) + " reports");
    const int64_t count = sentence_count(r);
    if (count == 0)
      throw std::invalid_argument("report " + std::to_string(r) +
                                  " has no sentence to sample (see empty_report_ids())");
    out[i] = first_sentence(r) + sample_choice(seed, epoch, static_cast<uint64_t>(r), draw, count);
  }
}

void SentenceIndex::save(const std::string& path) const {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  Header h{};
  std::memcpy(h.magic, kMagic, sizeof(kMagic));
  h.version = kVersion;
  h.min_tokens = static_cast<uint32_t>(min_tokens_);
  h.num_reports = static_cast<uint64_t>(num_reports_);
  h.num_sentences = static_cast<uint64_t>(num_sentences_);
  h.text_bytes = text_bytes_;
  h.text_checksum = fnv1a64(std::string_view(text_, text_bytes_));
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw std::runtime_error(errno_message("cannot write", tmp));
  bool ok = std::fwrite(&h, sizeof(h), 1, f) == 1;
  ok = ok && std::fwrite(report_offsets_, sizeof(int64_t), num_reports_ + 1, f) ==
                 static_cast<size_t>(num_reports_ + 1);
  ok = ok && std::fwrite(sentence_offsets_, sizeof(int64_t), num_sentences_ + 1, f) ==
                 static_cast<size_t>(num_sentences_ + 1);
  ok = ok && (text_bytes_ == 0 || std::fwrite(text_, 1, text_bytes_, f) == text_bytes_);
  ok = ok && std::fflush(f) == 0 && ::fsync(::fileno(f)) == 0;
  const std::string message = errno_message("cannot write", tmp);
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string error = ok ? errno_message("cannot rename into", path) : message;
    std::remove(tmp.c_str());
    throw std::runtime_error(error);
  }
}

SentenceIndex SentenceIndex::load(const std::string& path, bool verify) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error(errno_message("cannot open", path));
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw std::runtime_error(errno_message("cannot stat", path));
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < sizeof(Header)) {
    ::close(fd);
    throw IndexFormatError(path + ": not a sentence index (truncated: " + std::to_string(size) +
                           " bytes, header needs " + std::to_string(sizeof(Header)) + ")");
  }
  void* addr = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);  // the mapping keeps the file open
  if (addr == MAP_FAILED) throw std::runtime_error(errno_message("cannot map", path));
  std::shared_ptr<const void> mapping(addr, [size](const void* p) {
    ::munmap(const_cast<void*>(p), size);
  });
  const char* base = static_cast<const char*>(addr);
  Header h;
  std::memcpy(&h, base, sizeof(h));
  if (std::memcmp(h.magic, kMagic, sizeof(kMagic)) != 0)
    throw IndexFormatError(path + ": not a sentence index (bad magic)");
  if (h.version != kVersion)
    throw IndexFormatError(path + ": sentence index version " + std::to_string(h.version) +
                           ", this build reads " + std::to_string(kVersion));
  // Sizes are checked in floating point first so that absurd header values cannot overflow.
  const double expected_d = sizeof(Header) + 8.0 * (double(h.num_reports) + 1) +
                            8.0 * (double(h.num_sentences) + 1) + double(h.text_bytes);
  const uint64_t expected = sizeof(Header) + 8 * (h.num_reports + 1) +
                            8 * (h.num_sentences + 1) + h.text_bytes;
  if (expected_d != double(size) || expected != size)
    throw IndexFormatError(path + ": sentence index " +
                           (expected_d > double(size) ? "truncated" : "has trailing bytes") +
                           ": " + std::to_string(size) + " bytes, header says " +
                           std::to_string(static_cast<uint64_t>(expected_d)));
  SentenceIndex index;
  index.storage_ = mapping;
  index.num_reports_ = static_cast<int64_t>(h.num_reports);
  index.num_sentences_ = static_cast<int64_t>(h.num_sentences);
  index.min_tokens_ = static_cast<int>(h.min_tokens);
  index.report_offsets_ = reinterpret_cast<const int64_t*>(base + sizeof(Header));
  index.sentence_offsets_ = index.report_offsets_ + h.num_reports + 1;
  index.text_ = reinterpret_cast<const char*>(index.sentence_offsets_ + h.num_sentences + 1);
  index.text_bytes_ = h.text_bytes;
  check_offsets(path, "report", index.report_offsets_, h.num_reports + 1, h.num_sentences);
  check_offsets(path, "sentence", index.sentence_offsets_, h.num_sentences + 1, h.text_bytes);
  if (verify && fnv1a64(std::string_view(index.text_, index.text_bytes_)) != h.text_checksum)
    throw IndexFormatError(path + ": sentence index text checksum mismatch (corrupt file)");
  return index;
}

}  // namespace convirt
