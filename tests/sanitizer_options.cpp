// SPDX-License-Identifier: Apache-2.0
// Default sanitizer options of the test executables in a DOCKQUOTA_SANITIZE
// build (the sanitizer runtimes call these at start-up; ASAN_OPTIONS and
// UBSAN_OPTIONS in the environment still override them).
extern "C" {
// Leaks are findings; use-after-return too.
const char* __asan_default_options() { return "detect_leaks=1:detect_stack_use_after_return=1:strict_string_checks=1"; }
// With -fno-sanitize-recover=all UBSan stops at the first report; print where.
const char* __ubsan_default_options() { return "print_stacktrace=1:halt_on_error=1"; }
}
