# SPDX-License-Identifier: Apache-2.0
# The tests mpi.peer_exit_status{3,0}.np2 (docs/reliability.md, "Not covered here"): runs
# tests/mpi/test_peer_exit.cpp under mpirun with 2 ranks, where rank 1 exits with STATUS
# (default 3; 0 is an exit(0) that skips MPI_Finalize) while rank 0 waits inside a layer
# forward. Passes when mpirun returns non-zero within LIMIT seconds and rank 0 never printed
# "forward returned"; prints how long the abort took, from rank 1's exit to mpirun's return.
#   cmake -DMPIEXEC=... -DNP_FLAG=-np -DEXE=... [-DSTATUS=3] [-DLIMIT=45] -P peer_exit.cmake
if(NOT LIMIT)
  set(LIMIT 45)
endif()
if(NOT DEFINED STATUS)
  set(STATUS 3)
endif()
execute_process(
  COMMAND ${MPIEXEC} ${NP_FLAG} 2 --allow-run-as-root --oversubscribe ${EXE} ${STATUS}
  RESULT_VARIABLE rc
  OUTPUT_VARIABLE out
  ERROR_VARIABLE out
  TIMEOUT ${LIMIT})
string(TIMESTAMP end "%s.%f" UTC)  # seconds.microseconds (%f: CMake >= 3.23)
message("${out}")
if(rc MATCHES "timeout|Timeout")
  message(FATAL_ERROR "peer_exit: mpirun still running after ${LIMIT} s: the survivor hangs")
endif()
if(rc EQUAL 0)
  message(FATAL_ERROR "peer_exit: mpirun returned 0 although rank 1 exited (status ${STATUS}) "
                      "without MPI_Finalize")
endif()
if(out MATCHES "forward returned")
  message(FATAL_ERROR "peer_exit: rank 0's forward returned instead of the job being aborted")
endif()
if(NOT out MATCHES "rank 0 enters forward")
  message(FATAL_ERROR "peer_exit: rank 0 never reached the forward (${rc})")
endif()
if(end MATCHES "^([0-9]+)\\.0*([0-9]+)$")  # leading zeros of the microseconds dropped
  set(end_us "${CMAKE_MATCH_1} * 1000000 + ${CMAKE_MATCH_2}")
endif()
if(end_us AND out MATCHES "rank 1 exits at ([0-9]+) us")
  math(EXPR ms "(${end_us} - ${CMAKE_MATCH_1}) / 1000")
  message("peer_exit: PASSED: mpirun returned '${rc}' ${ms} ms after rank 1 exited "
          "(status ${STATUS})")
else()
  message("peer_exit: PASSED: mpirun returned '${rc}' (abort time not measured)")
endif()
