# SPDX-License-Identifier: Apache-2.0
# Warning flags for moe's own tests, examples and benchmarks (never imposed on consumers), and
# the kernel gates: ptxas turns register spills and local memory into errors in moe's CUDA
# targets, so a kernel that spills does not build.
function(moe_strict_warnings target)
  set(cxx_flags -Wall -Wextra -Wpedantic -Wconversion -Wshadow)
  if(MOE_WERROR)
    list(APPEND cxx_flags -Werror)
  endif()
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${cxx_flags}>)
  if(MOE_ENABLE_CUDA)
    set(cuda_flags -Xcompiler=-Wall,-Wextra -Xptxas=-warn-spills,-warn-lmem-usage)
    if(MOE_WERROR)
      list(APPEND cuda_flags -Werror=all-warnings -Xptxas=-Werror)
    endif()
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:${cuda_flags}>)
  endif()
endfunction()
