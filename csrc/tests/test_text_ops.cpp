// C++ unit tests of the text ops (registered with ctest). The exhaustive equality checks
// against the Python reference live in tests/test_text_ops.py; these pin the C++ logic itself.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "sections.h"
#include "sentence_index.h"
#include "sentences.h"

namespace {

int failures = 0;

#define CHECK(cond)                                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                     \
    }                                                                 \
  } while (0)

template <typename F>
bool throws(F&& f) {
  try {
    f();
  } catch (const std::exception&) {
    return true;
  }
  return false;
}

using Sentences = std::vector<std::string>;

void test_sections() {
  using convirt::extract_sections;
  CHECK(extract_sections("FINDINGS: Lungs clear.\n\nIMPRESSION: Normal.") == "Lungs clear.\n\nNormal.");
  CHECK(extract_sections("findings: lungs clear. impression: normal chest.") == "lungs clear.\n\nnormal chest.");
  CHECK(extract_sections("INDICATION: cough\nFINDINGS AND IMPRESSION: No acute process.") ==
        "No acute process.");
  CHECK(extract_sections(" FINAL REPORT\n INDICATION: pain\n PA AND LATERAL CHEST: The lungs are clear.") ==
        "The lungs are clear.");
  CHECK(extract_sections("Heart size normal. Lungs clear.") == "Heart size normal. Lungs clear.");
  CHECK(extract_sections("FINDINGS:   \nIMPRESSION:\n") == "");
  CHECK(extract_sections("") == "");
  // A boilerplate word with a colon inside a finding does not cut it.
  CHECK(extract_sections("FINDINGS: Unchanged since the prior exam: stable nodule.") ==
        "Unchanged since the prior exam: stable nodule.");
  auto headers = convirt::find_headers("A\nFINDINGS/IMPRESSION: x");
  CHECK(headers.size() == 1 && headers[0].name == "FINDINGS IMPRESSION");
}

void test_sentences() {
  using convirt::split_sentences;
  CHECK((split_sentences("A 2.5 cm nodule is seen. No effusion.") ==
         Sentences{"A 2.5 cm nodule is seen.", "No effusion."}));
  CHECK((split_sentences("Opacities, e.g. atelectasis, approx. 3 cm. Next one.") ==
         Sentences{"Opacities, e.g. atelectasis, approx. 3 cm.", "Next one."}));
  CHECK((split_sentences("1. Left opacity. 2. No effusion 3. Stable heart.") ==
         Sentences{"Left opacity.", "No effusion", "Stable heart."}));
  CHECK((split_sentences("Lungs are\n clear\n\nHeart normal") == Sentences{"Lungs are clear", "Heart normal"}));
  CHECK((split_sentences("Dr. ___ was paged. ___.") == Sentences{"Dr. ___ was paged."}));
  CHECK((split_sentences("Ribs 5 and 6. Heart normal.") == Sentences{"Ribs 5 and 6.", "Heart normal."}));
  CHECK((split_sentences("(See above.) Done!  ") == Sentences{"(See above.)", "Done!"}));
  CHECK(split_sentences("   \n\t ").empty());
  CHECK(convirt::count_tokens("XXXX XXXX the lungs ___") == 2);
  CHECK(convirt::count_tokens("Épanchement pleural") == 2);
}

void test_index() {
  std::vector<std::string> storage = {"FINDINGS: The heart is normal. Lungs are clear.", "", "FINDINGS: ok.",
                                      "IMPRESSION: No acute process here. Stable mild cardiomegaly."};
  std::vector<std::string_view> reports(storage.begin(), storage.end());
  for (int threads : {1, 2, 3}) {
    auto index = convirt::SentenceIndex::build(reports, threads, 3, true);
    CHECK(index.num_reports() == 4);
    CHECK(index.num_sentences() == 4);
    CHECK((index.empty_report_ids() == std::vector<int64_t>{1, 2}));
    CHECK(index.sentence(index.first_sentence(3) + 1) == "Stable mild cardiomegaly.");
  }
  auto index = convirt::SentenceIndex::build(reports, 2, 3, true);
  int64_t ids[3] = {0, 3, 0}, a[3], b[3];
  index.sample_ids(ids, 3, 7, 1, 0, a);
  index.sample_ids(ids, 3, 7, 1, 0, b);
  CHECK(a[0] == b[0] && a[1] == b[1] && a[0] == a[2]);
  CHECK(a[1] >= 2 && a[1] < 4);
  int64_t empty_id = 1, bad_id = 9, out;
  CHECK(throws([&] { index.sample_ids(&empty_id, 1, 0, 0, 0, &out); }));
  CHECK(throws([&] { index.sample_ids(&bad_id, 1, 0, 0, 0, &out); }));

  const std::string path = "test_text_ops.idx";
  index.save(path);
  auto loaded = convirt::SentenceIndex::load(path, true);
  CHECK(loaded.num_sentences() == index.num_sentences());
  CHECK(loaded.sentence(0) == index.sentence(0));
  {  // truncate: a clear IndexFormatError, not a crash
    std::ifstream in(path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), bytes.size() - 5);
  }
  bool truncated_error = false;
  try {
    convirt::SentenceIndex::load(path, false);
  } catch (const convirt::IndexFormatError& e) {
    truncated_error = std::string(e.what()).find("truncated") != std::string::npos;
  }
  CHECK(truncated_error);
  std::remove(path.c_str());
  // Uniformity, coarse: each of 4 choices gets about a quarter of 40,000 draws.
  int counts[4] = {0, 0, 0, 0};
  for (uint64_t epoch = 0; epoch < 40000; ++epoch) counts[convirt::sample_choice(1, epoch, 5, 0, 4)]++;
  for (int c : counts) CHECK(c > 9500 && c < 10500);
}

}  // namespace

int main() {
  test_sections();
  test_sentences();
  test_index();
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all text-op checks passed\n");
  return 0;
}
