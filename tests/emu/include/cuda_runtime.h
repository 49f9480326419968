// SPDX-License-Identifier: Apache-2.0
// moe_emu's stand-in for the CUDA runtime API: the subset moe and its tests call, on host memory,
// every operation done when issued (see moe_emu/emu.hpp).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <vector>

#include "moe_emu/emu.hpp"

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInsufficientDriver = 35,
  cudaErrorLaunchFailure = 719,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorStreamCaptureInvalidated = 901,
};
using cudaError = cudaError_t;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};

enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrClockRate = 13,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};

struct CUstream_st {
  int unused;
};
struct CUevent_st {
  double ms;
};
using cudaStream_t = CUstream_st*;
using cudaEvent_t = CUevent_st*;

/// A captured graph and its executable form: the recorded work, in order (moe_emu/emu.hpp).
struct CUgraph_st {
  std::vector<std::function<void()>> ops;
};
struct CUgraphExec_st {
  std::vector<std::function<void()>> ops;
};
using cudaGraph_t = CUgraph_st*;
using cudaGraphExec_t = CUgraphExec_st*;
enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2
};

constexpr unsigned cudaStreamNonBlocking = 1;
constexpr unsigned cudaEventDisableTiming = 2;
constexpr unsigned cudaEventDefault = 0;

struct cudaDeviceProp {
  char name[256];
  int major;
  int minor;
  int multiProcessorCount;
  std::size_t sharedMemPerBlockOptin;
  std::size_t totalGlobalMem;
};

namespace moe_emu {
/// The device the emulator pretends to be: sm_90, few SMs (so persistent grids loop).
constexpr int sm_count = 4;
/// Devices it reports (all alike): enough for one per rank of a multi-rank test.
constexpr int device_count = 8;
inline int current_device = 0;
inline double now_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}
inline cudaError_t take_error() {
  int const e = last_error;
  last_error = 0;
  return e == 0 ? cudaSuccess : cudaErrorInvalidConfiguration;
}
}  // namespace moe_emu

inline char const* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorStreamCaptureUnsupported:
      return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
      return "operation failed due to a previous error during capture";
    default:
      return "unspecified emulator error";
  }
}
inline char const* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorStreamCaptureUnsupported:
      return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated:
      return "cudaErrorStreamCaptureInvalidated";
    default:
      return "cudaErrorUnknown";
  }
}
inline cudaError_t cudaGetLastError() {
  return moe_emu::take_error();
}
inline cudaError_t cudaPeekAtLastError() {
  return moe_emu::last_error == 0 ? cudaSuccess : cudaErrorInvalidConfiguration;
}
inline cudaError_t cudaGetDeviceCount(int* n) {
  *n = moe_emu::device_count;
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* d) {
  *d = moe_emu::current_device;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int d) {
  if (d < 0 || d >= moe_emu::device_count) return cudaErrorInvalidValue;
  moe_emu::current_device = d;
  return cudaSuccess;
}
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (d < 0 || d >= moe_emu::device_count) return cudaErrorInvalidValue;
  *p = cudaDeviceProp{};
  std::strcpy(p->name, "moe_emu (CPU emulation, sm_90-like)");
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = moe_emu::sm_count;
  p->sharedMemPerBlockOptin = moe_emu::max_dynamic_smem;
  p->totalGlobalMem = std::size_t{16} << 30;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int d) {
  if (d < 0 || d >= moe_emu::device_count) return cudaErrorInvalidValue;
  switch (a) {
    case cudaDevAttrMaxThreadsPerBlock:
      *v = 1024;
      break;
    case cudaDevAttrClockRate:
      *v = 1980000;
      break;
    case cudaDevAttrMultiProcessorCount:
      *v = moe_emu::sm_count;
      break;
    case cudaDevAttrComputeCapabilityMajor:
      *v = 9;
      break;
    case cudaDevAttrComputeCapabilityMinor:
      *v = 0;
      break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *v = static_cast<int>(moe_emu::max_dynamic_smem);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}
template <class F>
cudaError_t cudaFuncSetAttribute(F*, cudaFuncAttribute, int value) {
  return value >= 0 && static_cast<std::size_t>(value) <= moe_emu::max_dynamic_smem
             ? cudaSuccess
             : cudaErrorInvalidValue;
}
template <class F>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, F*, int threads,
                                                          std::size_t smem) {
  if (threads < 1 || threads > 1024 || smem > moe_emu::max_dynamic_smem)
    return cudaErrorInvalidValue;
  *n = smem > moe_emu::max_dynamic_smem / 2 ? 1 : 2;
  return cudaSuccess;
}

inline cudaError_t cudaMalloc(void** p, std::size_t bytes) {
  *p = nullptr;
  if (moe_emu::capture_forbids()) return cudaErrorStreamCaptureUnsupported;
  if (bytes == 0) return cudaSuccess;
  // 256-byte aligned as the device's, and exactly `bytes` long, so that AddressSanitizer sees
  // the end of the buffer.
  void* q = nullptr;
  if (posix_memalign(&q, 256, bytes) != 0) return cudaErrorMemoryAllocation;
  std::memset(q, 0xa5, bytes);  // device memory starts as garbage
  *p = q;
  return cudaSuccess;
}
template <class T>
cudaError_t cudaMalloc(T** p, std::size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
inline cudaError_t cudaFree(void* p) {
  if (moe_emu::capture_forbids()) return cudaErrorStreamCaptureUnsupported;
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* dst, void const* src, std::size_t bytes, cudaMemcpyKind) {
  if (moe_emu::capture_forbids()) return cudaErrorStreamCaptureUnsupported;
  if (bytes > 0 && (dst == nullptr || src == nullptr)) return cudaErrorInvalidValue;
  if (bytes > 0) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* dst, void const* src, std::size_t bytes, cudaMemcpyKind,
                                   cudaStream_t = nullptr) {
  if (bytes > 0 && (dst == nullptr || src == nullptr)) return cudaErrorInvalidValue;
  if (bytes > 0) moe_emu::enqueue([=] { std::memmove(dst, src, bytes); });
  return cudaSuccess;
}
inline cudaError_t cudaMemset(void* p, int v, std::size_t bytes) {
  if (moe_emu::capture_forbids()) return cudaErrorStreamCaptureUnsupported;
  if (bytes > 0 && p == nullptr) return cudaErrorInvalidValue;
  if (bytes > 0) std::memset(p, v, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, std::size_t bytes, cudaStream_t = nullptr) {
  if (bytes > 0 && p == nullptr) return cudaErrorInvalidValue;
  if (bytes > 0) moe_emu::enqueue([=] { std::memset(p, v, bytes); });
  return cudaSuccess;
}
inline cudaError_t cudaDeviceSynchronize() {
  if (moe_emu::capture_forbids()) return cudaErrorStreamCaptureUnsupported;
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = new CUstream_st{};
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  return cudaStreamCreate(s);
}
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete s;
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) {
  if (moe_emu::capture_forbids()) return cudaErrorStreamCaptureUnsupported;
  return cudaSuccess;
}
inline cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned = 0) {
  return cudaSuccess;
}
inline cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new CUevent_st{0};
  return cudaSuccess;
}
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
  return cudaEventCreate(e);
}
inline cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t = nullptr) {
  e->ms = moe_emu::now_ms();
  return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t) {
  if (moe_emu::capture_forbids()) return cudaErrorStreamCaptureUnsupported;
  return cudaSuccess;
}
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  *ms = static_cast<float>(b->ms - a->ms);
  return cudaSuccess;
}

// ---- CUDA graphs: stream capture records the stream's work (moe_emu/emu.hpp) -------------------
// One capture at a time, of a stream created by the program (the legacy stream cannot be
// captured); which stream a piece of work names is not tracked, as every operation here runs in
// issue order anyway.
inline cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode) {
  if (s == nullptr) return cudaErrorStreamCaptureUnsupported;
  if (moe_emu::capture_ops != nullptr) return cudaErrorInvalidValue;
  moe_emu::capture_ops = new std::vector<std::function<void()>>();
  moe_emu::capture_invalid = false;
  return cudaSuccess;
}
inline cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t* g) {
  *g = nullptr;
  if (moe_emu::capture_ops == nullptr) return cudaErrorInvalidValue;
  std::unique_ptr<std::vector<std::function<void()>>> ops(moe_emu::capture_ops);
  moe_emu::capture_ops = nullptr;
  if (moe_emu::capture_invalid) return cudaErrorStreamCaptureInvalidated;
  *g = new CUgraph_st{std::move(*ops)};
  return cudaSuccess;
}
inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t* e, cudaGraph_t g,
                                        unsigned long long = 0) {
  *e = nullptr;
  if (g == nullptr) return cudaErrorInvalidValue;
  *e = new CUgraphExec_st{g->ops};
  return cudaSuccess;
}
inline cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t) {
  if (e == nullptr) return cudaErrorInvalidValue;
  for (auto const& op : e->ops) moe_emu::enqueue(op);
  return cudaSuccess;
}
inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) {
  delete e;
  return cudaSuccess;
}
inline cudaError_t cudaGraphDestroy(cudaGraph_t g) {
  delete g;
  return cudaSuccess;
}
