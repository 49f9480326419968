# SPDX-License-Identifier: Apache-2.0
# Package tests, run by ctest as `cmake -P run.cmake -DSTEP=...`:
#   STEP=install        configure moe alone (no tests) and install it into WORK_DIR/prefix
#   STEP=find_package   build the consumer against the installed moe, run it
#   STEP=subdirectory   build the consumer with add_subdirectory(moe), run it
# LANG=cxx builds the g++ consumer (with CUDA made unfindable, proving that the core package
# asks for no CUDA); LANG=cuda builds the nvcc consumer with components cuda, nccl and mpi.
cmake_minimum_required(VERSION 3.25)

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    list(JOIN ARGN " " cmd)
    message(FATAL_ERROR "package test: command failed (${rc}): ${cmd}")
  endif()
endfunction()

set(prefix ${WORK_DIR}/prefix)
if(STEP STREQUAL "install")
  file(REMOVE_RECURSE ${WORK_DIR}/build-moe ${prefix})
  run(${CMAKE_COMMAND} -S ${MOE_SOURCE_DIR} -B ${WORK_DIR}/build-moe -G ${GENERATOR}
      -DCMAKE_INSTALL_PREFIX=${prefix} -DMOE_BUILD_TESTS=OFF -DMOE_BUILD_EXAMPLES=OFF
      -DMOE_BUILD_BENCHMARKS=OFF)
  run(${CMAKE_COMMAND} --install ${WORK_DIR}/build-moe)
  return()
endif()

set(build ${WORK_DIR}/consumer-${STEP}-${LANG})
file(REMOVE_RECURSE ${build})
set(args -S ${MOE_SOURCE_DIR}/tests/package/consumer -B ${build} -G ${GENERATOR}
         -DMOE_CONSUMER_MODE=${STEP} -DMOE_SOURCE_DIR=${MOE_SOURCE_DIR})
if(STEP STREQUAL "find_package")
  list(APPEND args -DCMAKE_PREFIX_PATH=${prefix})
endif()
if(LANG STREQUAL "cuda")
  list(APPEND args -DMOE_CONSUMER_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=80-real)
else()
  list(APPEND args -DMOE_CONSUMER_CUDA=OFF -DCMAKE_DISABLE_FIND_PACKAGE_CUDAToolkit=ON
       -DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON)
endif()
run(${CMAKE_COMMAND} ${args})
run(${CMAKE_COMMAND} --build ${build})
run(${build}/consumer_cxx)
if(LANG STREQUAL "cuda")
  run(${build}/consumer_cuda)
endif()
