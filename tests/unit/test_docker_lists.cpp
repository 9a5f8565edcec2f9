// SPDX-License-Identifier: Apache-2.0
// Docker's list replies read with SAX into compact records (agent/runtime/docker_lists.h):
// real shapes, unknown and missing fields, odd numbers, malformed JSON, wrong
// shapes, and input that arrives a byte at a time.
#include <catch2/catch.hpp>

#include <sstream>
#include <streambuf>
#include <string>

#include "agent/runtime/docker_lists.h"

using namespace dockquota;
using nlohmann::json;

namespace {

// Hands its text over one byte per underflow(), like a slow socket.
class Trickle : public std::streambuf {
 public:
  explicit Trickle(std::string s) : s_(std::move(s)) {}

 protected:
  int_type underflow() override {
    if (pos_ >= s_.size()) return traits_type::eof();
    char* p = &s_[pos_++];
    setg(p, p, p + 1);
    return traits_type::to_int_type(*p);
  }

 private:
  std::string s_;
  size_t pos_ = 0;
};

template <typename F>
auto parse(F f, const std::string& text) {
  std::istringstream in(text);
  return f(in);
}

// A container as dockerd 20.10 lists it (GET /containers/json?all=1), with a
// nested "Id"-like key and a label set beside ours.
const char* kContainer = R"({
  "Id": "8dfafdbc3a40", "Names": ["/web-1", "/other/alias"], "Image": "bb:1",
  "ImageID": "sha256:aaa", "Command": "true", "Created": 1700000000,
  "Ports": [{"PrivatePort": 80, "Type": "tcp"}],
  "Labels": {"com.docker.compose.project": "p", "qman.user": "alice"},
  "State": "exited", "Status": "Exited (0) 2 hours ago",
  "HostConfig": {"NetworkMode": "none"},
  "NetworkSettings": {"Networks": {"none": {"NetworkID": "x", "Id": "not-the-container"}}},
  "Mounts": [{"Type": "volume", "Name": "v1", "Source": "", "Destination": "/data", "RW": true}]
})";

}  // namespace

TEST_CASE("docker lists: a container list keeps the fields the agent reads", "[docker_lists]") {
  auto r = parse(parseContainerList, std::string("[") + kContainer + R"(,
    {"Id": "b", "Names": ["c-two"], "State": "running", "SizeRw": 4096, "Labels": null},
    {"Id": "c"}])");
  REQUIRE(r.ok());
  REQUIRE(r->size() == 3);
  const DockerContainer& a = (*r)[0];
  CHECK(a.id == "8dfafdbc3a40");
  CHECK(a.name == "web-1");  // the first name, without '/'
  CHECK(a.image_id == "sha256:aaa");
  CHECK(a.state == "exited");
  CHECK_FALSE(a.size_rw);
  REQUIRE(a.label_user);
  CHECK(*a.label_user == "alice");
  CHECK((*r)[1].name == "c-two");
  CHECK((*r)[1].size_rw == 4096u);
  CHECK_FALSE((*r)[1].label_user);
  // Missing fields stay empty.
  CHECK((*r)[2].id == "c");
  CHECK((*r)[2].name.empty());
  CHECK((*r)[2].image_id.empty());
  CHECK((*r)[2].state.empty());
  CHECK_FALSE((*r)[2].size_rw);
  CHECK_FALSE((*r)[2].label_user);
}

TEST_CASE("docker lists: unknown fields, odd types and non-object elements are ignored", "[docker_lists]") {
  auto r = parse(parseContainerList, R"([
    1, "x", null, true, [{"Id": "in-a-nested-array"}],
    {"Extra": {"Id": "nested", "deep": [[[{"Names": ["/no"]}]]]}, "Id": "a", "Future": [1, {"k": "v"}]},
    {"Id": 7, "Names": "not-a-list", "State": {"Running": true}, "Labels": ["qman.user"]},
    {"Id": "dup", "Id": "last"}
  ])");
  REQUIRE(r.ok());
  REQUIRE(r->size() == 3);
  CHECK((*r)[0].id == "a");
  CHECK((*r)[0].name.empty());
  CHECK((*r)[1].id.empty());  // a number is not an id
  CHECK((*r)[1].name.empty());
  CHECK((*r)[1].state.empty());
  CHECK_FALSE((*r)[1].label_user);
  CHECK((*r)[2].id == "last");
  CHECK(parse(parseContainerList, "[]")->empty());
  CHECK(parse(parseContainerList, " \n[ ]\n ")->empty());
}

TEST_CASE("docker lists: sizes are integers from 0 up to 2^63 - 1, anything else is absent", "[docker_lists]") {
  auto sizeOf = [](const std::string& literal) {
    auto r = parse(parseContainerList, R"([{"Id": "a", "SizeRw": )" + literal + "}]");
    REQUIRE(r.ok());
    REQUIRE(r->size() == 1);
    return r->front().size_rw;
  };
  CHECK(sizeOf("0") == 0u);
  CHECK(sizeOf("123456789012") == 123456789012u);
  CHECK(sizeOf("9223372036854775807") == 9223372036854775807u);  // INT64_MAX
  CHECK_FALSE(sizeOf("9223372036854775808"));                    // not an int64
  CHECK_FALSE(sizeOf("18446744073709551615"));
  CHECK_FALSE(sizeOf("100000000000000000000000000000"));  // beyond 64 bits: read as a double
  CHECK_FALSE(sizeOf("1e30"));
  CHECK_FALSE(sizeOf("12.5"));
  CHECK_FALSE(sizeOf("-1"));  // Docker's "not computed"
  CHECK_FALSE(sizeOf("-9223372036854775808"));
  CHECK_FALSE(sizeOf("\"123\""));
  CHECK_FALSE(sizeOf("null"));
  CHECK_FALSE(sizeOf("{\"Size\": 1}"));
}

TEST_CASE("docker lists: images and volumes", "[docker_lists]") {
  auto images = parse(parseImageList, R"([
    {"Containers": -1, "Created": 1700000001, "Id": "sha256:i1", "Labels": null, "ParentId": "",
     "RepoDigests": [], "RepoTags": ["a:1", "b:2"], "SharedSize": -1, "Size": 4865239, "VirtualSize": 4865239},
    {"Id": "sha256:i2", "RepoTags": ["<none>:<none>"], "Size": -1, "Created": "yesterday"},
    {"Id": "sha256:i3", "RepoTags": null}
  ])");
  REQUIRE(images.ok());
  REQUIRE(images->size() == 3);
  CHECK((*images)[0].id == "sha256:i1");
  CHECK((*images)[0].tags == std::vector<std::string>{"a:1", "b:2"});
  CHECK((*images)[0].size == 4865239u);
  CHECK((*images)[0].created == 1700000001u);
  CHECK((*images)[1].tags == std::vector<std::string>{"<none>:<none>"});  // as sent; callers decide
  CHECK_FALSE((*images)[1].size);
  CHECK_FALSE((*images)[1].created);
  CHECK((*images)[2].tags.empty());

  auto volumes = parse(parseVolumeList, R"({"Volumes": [
      {"CreatedAt": "2024-01-01T00:00:00Z", "Driver": "local", "Labels": {"qman.user": "bob"},
       "Mountpoint": "/var/lib/docker/volumes/v1/_data", "Name": "v1", "Options": null, "Scope": "local"},
      {"Name": "v2", "UsageData": {"Size": -1, "RefCount": 2}}],
    "Warnings": null})");
  REQUIRE(volumes.ok());
  REQUIRE(volumes->size() == 2);
  CHECK((*volumes)[0].name == "v1");
  CHECK((*volumes)[0].mountpoint == "/var/lib/docker/volumes/v1/_data");
  CHECK((*volumes)[0].label_user == "bob");
  CHECK_FALSE((*volumes)[0].size);
  CHECK((*volumes)[0].ref_count == 0);
  CHECK_FALSE((*volumes)[1].size);
  CHECK((*volumes)[1].ref_count == 2);
  // Older daemons send null for no volumes; a reply without the key has none either.
  CHECK(parse(parseVolumeList, R"({"Volumes": null, "Warnings": null})")->empty());
  CHECK(parse(parseVolumeList, R"({"Warnings": ["x"]})")->empty());
}

TEST_CASE("docker lists: /system/df gives containers and volumes, in any order", "[docker_lists]") {
  auto df = parse(parseDiskUsage, R"({
    "LayersSize": 1092588,
    "Volumes": [{"Name": "v1", "Mountpoint": "/m", "UsageData": {"Size": 10, "RefCount": 1}}],
    "Images": [{"Id": "sha256:i1", "Containers": 1, "Size": 5}],
    "Containers": [{"Id": "c1", "Names": ["/one"], "ImageID": "sha256:i1", "State": "running", "SizeRw": 12,
                    "SizeRootFs": 99}],
    "BuildCache": [{"ID": "b", "Size": 1}],
    "BuilderSize": 0
  })");
  REQUIRE(df.ok());
  REQUIRE(df->containers.size() == 1);
  CHECK(df->containers[0].id == "c1");
  CHECK(df->containers[0].name == "one");
  CHECK(df->containers[0].size_rw == 12u);
  REQUIRE(df->volumes.size() == 1);
  CHECK(df->volumes[0].name == "v1");
  CHECK(df->volumes[0].size == 10u);
  CHECK(df->volumes[0].ref_count == 1);
  auto empty = parse(parseDiskUsage, R"({"Containers": null, "Volumes": null, "Images": []})");
  REQUIRE(empty.ok());
  CHECK(empty->containers.empty());
  CHECK(empty->volumes.empty());
}

TEST_CASE("docker lists: malformed JSON is a clear EPROTO error", "[docker_lists]") {
  for (const char* text : {"", "[", "[{\"Id\": \"a\"}", "[{\"Id\": \"a\",]", "[{\"Id\" \"a\"}]", "[1 2]",
                           "[{\"Id\": \"a\"}] trailing", "[{\"Id\": [}]", "nul", "[\"\\x\"]"}) {
    INFO(text);
    auto r = parse(parseContainerList, text);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == EPROTO);
    CHECK_THAT(r.error().message, Catch::StartsWith("reply is not JSON: parse error at line "));
  }
  auto r = parse(parseContainerList, "[{\"Id\": \"a\", oops}]");
  CHECK(r.error().message ==
        "reply is not JSON: parse error at line 1, column 14: syntax error while parsing object key - invalid "
        "literal; last read: '\"a\", o'; expected string literal");
}

TEST_CASE("docker lists: a reply of another shape is refused", "[docker_lists]") {
  struct Case {
    const char* text;
    const char* error;
  };
  for (const Case& c : {Case{R"({"not": "an array"})", "expected a JSON array"}, Case{"42", "expected a JSON array"},
                        Case{"null", "expected a JSON array"}}) {
    INFO(c.text);
    auto r = parse(parseContainerList, c.text);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == EPROTO);
    CHECK(r.error().message == c.error);
  }
  for (const Case& c : {Case{"[]", "expected a JSON object"}, Case{"\"x\"", "expected a JSON object"},
                        Case{R"({"Volumes": {"Name": "v"}})", "\"Volumes\" is not an array"},
                        Case{R"({"Volumes": 3})", "\"Volumes\" is not an array"}}) {
    INFO(c.text);
    auto r = parse(parseVolumeList, c.text);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == EPROTO);
    CHECK(r.error().message == c.error);
  }
  CHECK(parse(parseDiskUsage, R"({"Containers": "all of them"})").error().message == "\"Containers\" is not an array");
}

TEST_CASE("docker lists: input that arrives a byte at a time", "[docker_lists]") {
  std::string text = "[";
  for (int i = 0; i < 500; i++) {
    json c = json::parse(kContainer);
    c["Id"] = "c" + std::to_string(i);
    c["SizeRw"] = i;
    text += (i ? "," : "") + c.dump(i % 2 ? 2 : -1);
  }
  text += "]";
  Trickle buf(text);
  std::istream in(&buf);
  auto r = parseContainerList(in);
  REQUIRE(r.ok());
  REQUIRE(r->size() == 500);
  CHECK(r->back().id == "c499");
  CHECK(r->back().size_rw == 499u);
  CHECK(r->back().label_user == "alice");
}

TEST_CASE("docker lists: field readers for the JSON trees of inspect and events", "[docker_lists]") {
  json j = {{"s", "x"}, {"n", 5}, {"neg", -1}, {"labels", {{"qman.user", "carol"}}}, {"bad", {{"qman.user", 1}}}};
  CHECK(jsonText(j, "s") == "x");
  CHECK(jsonText(j, "n").empty());
  CHECK(jsonText(j, "missing").empty());
  CHECK(jsonText(json::array(), "s").empty());
  CHECK(jsonSize(j, "n") == 5u);
  CHECK_FALSE(jsonSize(j, "neg"));
  CHECK_FALSE(jsonSize(j, "s"));
  CHECK(labelUser(j["labels"]) == "carol");
  CHECK_FALSE(labelUser(j["bad"]));
  CHECK_FALSE(labelUser(json(nullptr)));
}
