// SPDX-License-Identifier: Apache-2.0
// doctest's main for the host test binaries; each op's tests live in their own test_*.cpp.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
