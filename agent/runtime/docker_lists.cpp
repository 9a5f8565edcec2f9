// SPDX-License-Identifier: Apache-2.0
#include "agent/runtime/docker_lists.h"

#include <algorithm>
#include <functional>
#include <initializer_list>
#include <span>
#include <string_view>

namespace dockquota {
namespace {

using json = nlohmann::json;

// One list in a reply: where it is, what of each element is kept, and who
// takes the elements.
struct ListSpec {
  std::string_view key;                    // key of the root object holding the list; "" = the root is the list
  std::span<const std::string_view> keep;  // keys kept of each element (an object)
  std::function<void(const json&)> take;   // called once per element, with only `keep`
};

// SAX handler: walks the reply, builds a tree of one list element at a time
// (only its `keep` keys, their values whole), hands it to the spec, drops it.
// Everything else is skipped as it is read. Depths count the arrays and
// objects open, the root being 1.
class ListReader final : public nlohmann::json_sax<json> {
 public:
  explicit ListReader(std::initializer_list<ListSpec> specs) : specs_(specs) {}

  // Why reading stopped ("" if it did not).
  const std::string& error() const { return error_; }

  bool null() override { return scalar(json(nullptr)); }
  bool boolean(bool v) override { return scalar(json(v)); }
  bool number_integer(number_integer_t v) override { return scalar(json(v)); }
  bool number_unsigned(number_unsigned_t v) override { return scalar(json(v)); }
  bool number_float(number_float_t v, const string_t&) override { return scalar(json(v)); }
  bool string(string_t& v) override { return scalar(json(std::move(v))); }
  bool binary(binary_t&) override { return scalar(json()); }  // not produced by JSON text
  bool start_object(std::size_t) override { return open(json::value_t::object); }
  bool start_array(std::size_t) override { return open(json::value_t::array); }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }

  bool key(string_t& k) override {
    if (skip_ > 0) return true;
    if (!stack_.empty()) {
      // Only the element's own keys are filtered; below them values are whole.
      if (stack_.size() == 1 && std::find(list_->keep.begin(), list_->keep.end(), k) == list_->keep.end()) {
        skip_next_ = true;
      } else {
        key_ = std::move(k);
      }
      return true;
    }
    if (depth_ == 1) {  // a key of the root object: a list we read, or skipped
      auto it = std::find_if(specs_.begin(), specs_.end(), [&](const ListSpec& s) { return s.key == k; });
      pending_ = it == specs_.end() ? nullptr : &*it;
      skip_next_ = pending_ == nullptr;
    }
    return true;
  }

  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    // "[json.exception.parse_error.101] parse error at line 1, column 7: ..." without the tag.
    std::string_view what = e.what();
    if (auto sp = what.find("] "); what.rfind("[json.exception", 0) == 0 && sp != std::string_view::npos)
      what.remove_prefix(sp + 2);
    error_ = "reply is not JSON: " + std::string(what);
    return false;
  }

 private:
  // Where the value that starts now goes.
  enum class Place { Skip, Tree, Element, Root, List };
  Place place() {
    if (skip_ > 0) return Place::Skip;
    if (skip_next_) {
      skip_next_ = false;
      return Place::Skip;
    }
    if (!stack_.empty()) return Place::Tree;
    if (list_ && depth_ == list_depth_) return Place::Element;
    if (depth_ == 0) return Place::Root;
    if (depth_ == 1 && pending_) return Place::List;
    return Place::Skip;
  }

  const ListSpec* rootList() const {
    auto it = std::find_if(specs_.begin(), specs_.end(), [](const ListSpec& s) { return s.key.empty(); });
    return it == specs_.end() ? nullptr : &*it;
  }

  bool fail(std::string why) {
    error_ = std::move(why);
    return false;
  }

  // Adds `v` under the element tree's innermost open array or object.
  json* attach(json v) {
    json& parent = *stack_.back();
    if (parent.is_array()) {
      parent.push_back(std::move(v));
      return &parent.back();
    }
    json& slot = parent[key_];
    slot = std::move(v);
    return &slot;
  }

  bool scalar(json v) {
    switch (place()) {
      case Place::Tree: attach(std::move(v)); return true;
      case Place::Root: return fail(rootList() ? "expected a JSON array" : "expected a JSON object");
      case Place::List: {
        const ListSpec* spec = std::exchange(pending_, nullptr);
        if (v.is_null()) return true;  // older daemons send null for an empty list
        return fail("\"" + std::string(spec->key) + "\" is not an array");
      }
      case Place::Element:  // not an object: nothing to read in it
      case Place::Skip: return true;
    }
    return true;
  }

  bool open(json::value_t type) {
    switch (place()) {
      case Place::Skip: ++skip_; return true;
      case Place::Tree: stack_.push_back(attach(json(type))); break;
      case Place::Element:
        if (type != json::value_t::object) {
          ++skip_;
          return true;
        }
        element_ = json(type);
        stack_.push_back(&element_);
        break;
      case Place::Root: {
        const bool array = type == json::value_t::array;
        if (array != (rootList() != nullptr)) return fail(array ? "expected a JSON object" : "expected a JSON array");
        if (array) {
          list_ = rootList();
          list_depth_ = 1;
        }
        break;
      }
      case Place::List:
        if (type != json::value_t::array) return fail("\"" + std::string(pending_->key) + "\" is not an array");
        list_ = std::exchange(pending_, nullptr);
        list_depth_ = 2;
        break;
    }
    ++depth_;
    return true;
  }

  bool close() {
    if (skip_ > 0) {
      --skip_;
      return true;
    }
    --depth_;
    if (!stack_.empty()) {
      stack_.pop_back();
      if (stack_.empty()) {
        list_->take(element_);
        element_ = json();
      }
    } else if (list_ && depth_ < list_depth_) {
      list_ = nullptr;  // the list ended
    }
    return true;
  }

  std::initializer_list<ListSpec> specs_;
  std::string error_;
  int depth_ = 0;
  int skip_ = 0;                       // open arrays/objects inside a skipped value
  bool skip_next_ = false;             // the next value is skipped (a key we do not read)
  const ListSpec* pending_ = nullptr;  // the root key just read names this list
  const ListSpec* list_ = nullptr;     // the list being read
  int list_depth_ = 0;                 // depth_ inside that list (its elements start here)
  json element_;                       // the element being read
  std::vector<json*> stack_;           // its open arrays/objects, element_ first
  std::string key_;                    // the key of the next value in an object of the element
};

Status readLists(std::istream& in, std::initializer_list<ListSpec> specs) {
  ListReader reader(specs);
  if (!json::sax_parse(in, &reader)) {
    return Error{EPROTO, reader.error().empty() ? "reply is not JSON" : reader.error()};
  }
  return {};
}

// Element keys each record reads (and only those are kept while reading).
constexpr std::string_view kContainerKeys[] = {"Id", "Names", "ImageID", "State", "SizeRw", "Labels"};
constexpr std::string_view kImageKeys[] = {"Id", "RepoTags", "Size", "Created"};
constexpr std::string_view kVolumeKeys[] = {"Name", "Mountpoint", "UsageData", "Labels"};

DockerContainer containerOf(const json& c) {
  DockerContainer r;
  r.id = jsonText(c, "Id");
  if (auto n = c.find("Names"); n != c.end() && n->is_array() && !n->empty() && n->front().is_string()) {
    r.name = n->front().get<std::string>();
    if (!r.name.empty() && r.name[0] == '/') r.name.erase(0, 1);
  }
  r.image_id = jsonText(c, "ImageID");
  r.state = jsonText(c, "State");
  r.size_rw = jsonSize(c, "SizeRw");
  if (auto l = c.find("Labels"); l != c.end()) r.label_user = labelUser(*l);
  return r;
}

DockerImage imageOf(const json& i) {
  DockerImage r;
  r.id = jsonText(i, "Id");
  if (auto t = i.find("RepoTags"); t != i.end() && t->is_array()) {
    for (const auto& tag : *t)
      if (tag.is_string()) r.tags.push_back(tag.get<std::string>());
  }
  r.size = jsonSize(i, "Size");
  r.created = jsonSize(i, "Created");
  return r;
}

DockerVolume volumeOf(const json& v) {
  DockerVolume r;
  r.name = jsonText(v, "Name");
  r.mountpoint = jsonText(v, "Mountpoint");
  if (auto u = v.find("UsageData"); u != v.end() && u->is_object()) {
    r.size = jsonSize(*u, "Size");
    r.ref_count = jsonSize(*u, "RefCount").value_or(0);
  }
  if (auto l = v.find("Labels"); l != v.end()) r.label_user = labelUser(*l);
  return r;
}

}  // namespace

std::string jsonText(const json& obj, const char* key) {
  auto it = obj.find(key);
  return it != obj.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::optional<uint64_t> jsonSize(const json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_number_integer()) return std::nullopt;
  // Docker's sizes are int64: a larger unsigned value is not one.
  if (it->is_number_unsigned()) {
    const uint64_t u = it->get<uint64_t>();
    return u <= static_cast<uint64_t>(INT64_MAX) ? std::optional<uint64_t>(u) : std::nullopt;
  }
  const int64_t v = it->get<int64_t>();
  return v < 0 ? std::nullopt : std::optional<uint64_t>(static_cast<uint64_t>(v));
}

std::optional<std::string> labelUser(const json& labels) {
  if (!labels.is_object()) return std::nullopt;
  auto it = labels.find("qman.user");
  if (it == labels.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

Result<std::vector<DockerContainer>> parseContainerList(std::istream& in) {
  std::vector<DockerContainer> out;
  if (auto s = readLists(in, {{"", kContainerKeys, [&](const json& c) { out.push_back(containerOf(c)); }}}); !s)
    return s.error();
  return out;
}

Result<std::vector<DockerImage>> parseImageList(std::istream& in) {
  std::vector<DockerImage> out;
  if (auto s = readLists(in, {{"", kImageKeys, [&](const json& i) { out.push_back(imageOf(i)); }}}); !s)
    return s.error();
  return out;
}

Result<std::vector<DockerVolume>> parseVolumeList(std::istream& in) {
  std::vector<DockerVolume> out;
  if (auto s = readLists(in, {{"Volumes", kVolumeKeys, [&](const json& v) { out.push_back(volumeOf(v)); }}}); !s)
    return s.error();
  return out;
}

Result<DockerDiskUsage> parseDiskUsage(std::istream& in) {
  DockerDiskUsage out;
  if (auto s = readLists(
          in, {{"Containers", kContainerKeys, [&](const json& c) { out.containers.push_back(containerOf(c)); }},
               {"Volumes", kVolumeKeys, [&](const json& v) { out.volumes.push_back(volumeOf(v)); }}});
      !s)
    return s.error();
  return out;
}

}  // namespace dockquota
