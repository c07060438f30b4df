// Python bindings of the text ops: argument checks, GIL release, docstrings. No logic here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <cstring>
#include <filesystem>

#include "sections.h"
#include "sentence_index.h"
#include "sentences.h"

namespace py = pybind11;
using convirt::SentenceIndex;

namespace {

// UTF-8 views of Python str objects; `keep_alive` owns the objects for the views' lifetime.
std::vector<std::string_view> utf8_views(py::handle iterable, py::list& keep_alive) {
  for (auto item : iterable) keep_alive.append(item);
  std::vector<std::string_view> views;
  views.reserve(keep_alive.size());
  for (size_t i = 0; i < keep_alive.size(); ++i) {
    PyObject* obj = keep_alive[i].ptr();
    if (!PyUnicode_Check(obj))
      throw py::type_error("reports[" + std::to_string(i) + "] is " +
                           std::string(Py_TYPE(obj)->tp_name) + ", expected str");
    Py_ssize_t size;
    const char* data = PyUnicode_AsUTF8AndSize(obj, &size);  // cached in the object
    if (!data) throw py::error_already_set();
    views.emplace_back(data, static_cast<size_t>(size));
  }
  return views;
}

std::string_view utf8_view(const py::str& s) {
  Py_ssize_t size;
  const char* data = PyUnicode_AsUTF8AndSize(s.ptr(), &size);
  if (!data) throw py::error_already_set();
  return {data, static_cast<size_t>(size)};
}

// Report ids from a list/tuple of ints (the common, small case) or any int array.
std::vector<int64_t> report_id_vector(py::handle ids) {
  std::vector<int64_t> out;
  if (PyList_Check(ids.ptr()) || PyTuple_Check(ids.ptr())) {
    py::sequence seq = py::reinterpret_borrow<py::sequence>(ids);
    out.reserve(seq.size());
    PyObject** items = PySequence_Fast_ITEMS(seq.ptr());
    for (Py_ssize_t i = 0, n = PySequence_Fast_GET_SIZE(seq.ptr()); i < n; ++i) {
      const long long v = PyLong_AsLongLong(items[i]);
      if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
      out.push_back(v);
    }
    return out;
  }
  auto array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(ids);
  if (!array) throw py::type_error("report_ids must be a sequence or array of ints");
  if (array.ndim() != 1) throw py::value_error("report_ids must be one-dimensional");
  out.assign(array.data(), array.data() + array.size());
  return out;
}

py::str sentence_str(const SentenceIndex& index, int64_t s) {
  const auto v = index.sentence(s);
  // Report text is nearly all ASCII: a compact ASCII str plus memcpy skips the UTF-8 decoder,
  // which is most of the cost of sampling a batch.
  unsigned char high_bits = 0;
  for (unsigned char c : v) high_bits |= c;
  PyObject* out;
  if (high_bits < 0x80) {
    out = PyUnicode_New(static_cast<Py_ssize_t>(v.size()), 127);
    if (out) std::memcpy(PyUnicode_DATA(out), v.data(), v.size());
  } else {
    out = PyUnicode_DecodeUTF8(v.data(), static_cast<Py_ssize_t>(v.size()), nullptr);
  }
  if (!out) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(out);
}

void check_report(const SentenceIndex& index, int64_t r) {
  if (r < 0 || r >= index.num_reports())
    throw py::index_error("report id " + std::to_string(r) + " out of range for an index of " +
                          std::to_string(index.num_reports()) + " reports");
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "convirt_fast C++ text ops (see convirt_fast.text for the documented API)";
  py::register_exception<convirt::IndexFormatError>(m, "IndexFormatError", PyExc_ValueError);

  m.def(
      "extract_sections",
      [](const py::str& report) {
        auto text = utf8_view(report);
        std::string out;
        {
          py::gil_scoped_release release;
          out = convirt::extract_sections(text);
        }
        return out;
      },
      py::arg("report"),
      "The Findings and Impression sections of a radiology report (rules: "
      "convirt_fast.text.reference.extract_sections).");

  m.def(
      "split_sentences",
      [](const py::str& text) {
        auto view = utf8_view(text);
        std::vector<std::string> out;
        {
          py::gil_scoped_release release;
          out = convirt::split_sentences(view);
        }
        return out;
      },
      py::arg("text"), "Sentences of report text (rules: convirt_fast.text.reference.split_sentences).");

  m.def(
      "count_tokens", [](const py::str& s) { return convirt::count_tokens(utf8_view(s)); },
      py::arg("sentence"), "Words that carry content (placeholders excluded).");

  m.def("splitmix64", &convirt::splitmix64, py::arg("x"), "The splitmix64 finaliser of a 64-bit key.");
  m.def(
      "sample_choice",
      [](uint64_t seed, uint64_t epoch, uint64_t report_id, uint64_t draw, int64_t count) {
        if (count <= 0) throw py::value_error("sample_choice: count must be > 0");
        return convirt::sample_choice(seed, epoch, report_id, draw, count);
      },
      py::arg("seed"), py::arg("epoch"), py::arg("report_id"), py::arg("draw"), py::arg("count"),
      "Which of `count` items a key (seed, epoch, report id, draw) gets: uniform, from its 64-bit hash.");

  py::class_<SentenceIndex>(m, "SentenceIndex",
                            "Report -> sentences in CSR layout over one UTF-8 buffer.")
      .def_static(
          "build",
          [](py::handle reports, int threads, int min_tokens, bool sections) {
            if (min_tokens < 0) throw py::value_error("min_tokens must be >= 0");
            py::list keep_alive;
            auto views = utf8_views(reports, keep_alive);
            py::gil_scoped_release release;
            return SentenceIndex::build(views, threads, min_tokens, sections);
          },
          py::arg("reports"), py::kw_only(), py::arg("threads") = 0, py::arg("min_tokens") = 3,
          py::arg("sections") = true,
          "Index reports: sections extracted (if `sections`), split into sentences, sentences "
          "with fewer than `min_tokens` tokens dropped. `threads=0` uses every core; the GIL "
          "is released while building.")
      .def_static(
          "load",
          [](const std::filesystem::path& path, bool verify) {
            py::gil_scoped_release release;
            return SentenceIndex::load(path.string(), verify);
          },
          py::arg("path"), py::kw_only(), py::arg("verify") = false,
          "Memory-map an index file; sizes and offsets are validated, `verify` also checks "
          "the text checksum (reading the whole file). Raises IndexFormatError.")
      .def(
          "save",
          [](const SentenceIndex& self, const std::filesystem::path& path) {
            py::gil_scoped_release release;
            self.save(path.string());
          },
          py::arg("path"), "Write the index atomically (temporary file, fsync, rename).")
      .def("__len__", &SentenceIndex::num_reports)
      .def_property_readonly("num_sentences", &SentenceIndex::num_sentences)
      .def_property_readonly("min_tokens", &SentenceIndex::min_tokens)
      .def(
          "sentences",
          [](const SentenceIndex& self, int64_t report_id) {
            check_report(self, report_id);
            py::list out;
            const int64_t first = self.first_sentence(report_id);
            for (int64_t s = first; s < first + self.sentence_count(report_id); ++s)
              out.append(sentence_str(self, s));
            return out;
          },
          py::arg("report_id"), "The report's sentences, in order.")
      .def("empty_report_ids", &SentenceIndex::empty_report_ids,
           "Reports left with no sentence (to drop, and count, before training).")
      .def(
          "sample_ids",
          [](const SentenceIndex& self, py::handle report_ids, int64_t seed, int64_t epoch,
             int64_t draw) {
            auto ids = report_id_vector(report_ids);
            py::array_t<int64_t> out(static_cast<py::ssize_t>(ids.size()));
            int64_t* dst = out.mutable_data();
            {
              py::gil_scoped_release release;
              self.sample_ids(ids.data(), ids.size(), seed, epoch, draw, dst);
            }
            return out;
          },
          py::arg("report_ids"), py::kw_only(), py::arg("seed"), py::arg("epoch"),
          py::arg("draw") = 0, "Global sentence ids, one per report id (see sample).")
      .def(
          "sample",
          [](const SentenceIndex& self, py::handle report_ids, int64_t seed, int64_t epoch,
             int64_t draw) {
            auto ids = report_id_vector(report_ids);
            std::vector<int64_t> chosen(ids.size());
            {
              py::gil_scoped_release release;
              self.sample_ids(ids.data(), ids.size(), seed, epoch, draw, chosen.data());
            }
            py::list out(chosen.size());
            for (size_t i = 0; i < chosen.size(); ++i)
              PyList_SET_ITEM(out.ptr(), i, sentence_str(self, chosen[i]).release().ptr());
            return out;
          },
          py::arg("report_ids"), py::kw_only(), py::arg("seed"), py::arg("epoch"),
          py::arg("draw") = 0,
          "One sentence per report id, uniform over its sentences, a pure function of (seed, "
          "epoch, report id, draw): independent of batch order, rank and worker count.");
}
