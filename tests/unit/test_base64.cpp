// SPDX-License-Identifier: Apache-2.0
// base64 (agent/base/base64.h): the mailer's encoded words, the API's Basic
// credentials, Docker's authorization-plugin bodies; against RFC 4648.
#include <catch2/catch.hpp>

#include <string>
#include <string_view>

#include "agent/base/base64.h"

using namespace dockquota;
using namespace std::string_view_literals;

TEST_CASE("base64Encode: the RFC 4648 section 10 test vectors", "[mail][base64]") {
  CHECK(base64Encode("") == "");
  CHECK(base64Encode("f") == "Zg==");
  CHECK(base64Encode("fo") == "Zm8=");
  CHECK(base64Encode("foo") == "Zm9v");
  CHECK(base64Encode("foob") == "Zm9vYg==");
  CHECK(base64Encode("fooba") == "Zm9vYmE=");
  CHECK(base64Encode("foobar") == "Zm9vYmFy");
}

TEST_CASE("base64Encode: every byte value, the whole alphabet, no line breaks", "[mail][base64]") {
  CHECK(base64Encode(std::string("\0\0\0", 3)) == "AAAA");
  CHECK(base64Encode(std::string("\0", 1)) == "AA==");
  CHECK(base64Encode("\xff\xff\xff") == "////");
  CHECK(base64Encode("\xfb\xff\xbf") == "+/+/");  // '+' and '/', not the URL alphabet's '-' and '_'
  CHECK(base64Encode("\x00\x10\x83\x10\x51\x87\x20\x92\x8b\x30\xd3\x8f\x41\x14\x93\x51\x55\x97\x61\x96\x9b\x71\xd7"
                     "\x9f\x82\x18\xa3\x92\x59\xa7\xa2\x9a\xab\xb2\xdb\xaf\xc3\x1c\xb3\xd3\x5d\xb7\xe3\x9e\xbb\xf3\xdf"
                     "\xbf"sv) == "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/");
  // "bâtiment-ü", as in a mail's Subject.
  CHECK(base64Encode("b\xc3\xa2timent-\xc3\xbc") == "YsOidGltZW50LcO8");
}

TEST_CASE("base64Encode: long input, across the pieces it is encoded in", "[mail][base64]") {
  std::string want;
  for (int i = 0; i < 3000; ++i) want += "YWFh";  // "aaa"
  CHECK(base64Encode(std::string(9000, 'a')) == want);
  CHECK(base64Encode(std::string(9001, 'a')) == want + "YQ==");
  CHECK(base64Encode(std::string(9002, 'a')) == want + "YWE=");
  const std::string long_one = base64Encode(std::string(100000, 'x'));
  CHECK(long_one.size() == (100000 + 2) / 3 * 4);
  CHECK(long_one.find_first_of("\r\n") == std::string::npos);
}

TEST_CASE("base64Decode: RFC 4648 vectors and round trips across pieces", "[base64]") {
  CHECK(base64Decode("") == std::string());
  CHECK(base64Decode("Zg==") == std::string("f"));
  CHECK(base64Decode("Zm8=") == std::string("fo"));
  CHECK(base64Decode("Zm9vYmFy") == std::string("foobar"));
  CHECK(base64Decode("AA==") == std::string("\0", 1));
  for (size_t n : {0, 1, 2, 3, 3071, 3072, 3073, 9001, 100000}) {
    std::string raw(n, '\0');
    for (size_t i = 0; i < n; i++) raw[i] = static_cast<char>(i * 131 + 7);
    INFO(n);
    CHECK(base64Decode(base64Encode(raw)) == raw);
  }
}

TEST_CASE("base64Decode: refuses what is not whole padded base64", "[base64]") {
  CHECK_FALSE(base64Decode("Zg="));        // not a multiple of 4
  CHECK_FALSE(base64Decode("Zg=a"));       // '=' inside
  CHECK_FALSE(base64Decode("QQ==QQ=="));   // padding in the middle
  CHECK_FALSE(base64Decode("Z==="));       // three '='
  CHECK_FALSE(base64Decode("Zm9v!mFy"));   // outside the alphabet
  CHECK_FALSE(base64Decode("Zm9v\nmFy"));  // no line breaks
}
