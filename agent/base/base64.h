// SPDX-License-Identifier: Apache-2.0
// RFC 4648 base64 with padding, no line breaks (OpenSSL's EVP blocks): the
// mailer's encoded words, the API's Basic credentials, and the request bodies
// Docker hands its authorization plugins (Go's []byte in JSON).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace dockquota {

std::string base64Encode(std::string_view in);
// nullopt for anything that is not whole, padded base64 (a length that is not
// a multiple of 4, a character outside the alphabet, '=' before the end).
std::optional<std::string> base64Decode(std::string_view in);

}  // namespace dockquota
