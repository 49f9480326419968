// SPDX-License-Identifier: Apache-2.0
// The expert-parallel CUDA layer over NCCL under `mpirun -np R` (R = 1, 2, 4): rank r's
// moe::layer<C, moe::cuda_policy, moe::comm::nccl> (NCCL bootstrapped through MPI) against the
// host layer on the same global batch, which every rank computes, as tests/mpi/test_layer_ep.cpp
// does for the host path. The group's batch is the ranks' tokens concatenated in rank order.
// Compared as ep_reference.hpp says (integers bitwise, floats within a bound relative to the
// tensor's largest magnitude): the bounds are test_layer.cu's for the CUDA layer against the host
// layer, fp64 1e-10 and fp32 1e-4 (sums of the same terms in another order); losses 1e-6.
// Scenarios: equal shares with a skewed gate (drops; expert E-1 receives nothing), unequal
// shares with a rank that has no tokens, a dropless SwiGLU config.
// On GPUs rank r uses device r: R devices are needed, else every rank exits 77 (skipped). Under
// moe_emu (label emu) every rank emulates one device and NCCL's exchanges go over MPI.
#include <cuda_runtime.h>
#include <mpi.h>

#include <algorithm>  // std::max
#include <cstdint>    // std::int64_t
#include <cstdio>     // std::printf
#include <vector>     // std::vector

#include "../mpi/ep_reference.hpp"  // reference, check, equal_shares, uneven_shares
#include "moe/comm/mpi.hpp"
#include "moe/comm/nccl_mpi.cuh"
#include "moe/configs.hpp"
#include "moe/cuda/layer_ep.cuh"
#include "moe/layer.hpp"

namespace {

using moe::test::ep::check;
using moe::test::ep::failures;
using moe::test::ep::rank;

/// Device memory of n elements (at least one), freed at scope end.
template <class T>
struct device_array {
  T* p = nullptr;
  explicit device_array(std::int64_t n) {
    check(cudaMalloc(&p, static_cast<std::size_t>(std::max<std::int64_t>(n, 1)) * sizeof(T)) ==
              cudaSuccess,
          "cudaMalloc");
  }
  ~device_array() { cudaFree(p); }
  device_array(device_array const&) = delete;
  device_array& operator=(device_array const&) = delete;
};

template <class T>
void upload(T* dst, T const* src, std::int64_t n) {
  if (n > 0)
    check(cudaMemcpy(dst, src, static_cast<std::size_t>(n) * sizeof(T), cudaMemcpyHostToDevice) ==
              cudaSuccess,
          "upload");
}

template <class T>
std::vector<T> download(T const* src, std::int64_t n) {
  std::vector<T> h(static_cast<std::size_t>(std::max<std::int64_t>(n, 1)));
  if (n > 0)
    check(cudaMemcpy(h.data(), src, static_cast<std::size_t>(n) * sizeof(T),
                     cudaMemcpyDeviceToHost) == cudaSuccess,
          "download");
  return h;
}

/// One scenario (ep_reference.hpp): tokens[r] on rank r, the gate skewed and starved; the
/// expert-parallel CUDA layer gets the host layer's weights.
template <moe::config C>
void scenario(char const* name, moe::comm::nccl const& comm, cudaStream_t stream,
              std::vector<std::int64_t> const& tokens, double skew, bool starve, double tol) {
  using A = moe::act_t<C>;
  using W = moe::weight_t<C>;
  using G = moe::accum_t<C>;
  std::int32_t const R = comm.size(), r = comm.rank();
  moe::test::ep::reference<C> ref(R, r, tokens, skew, starve);
  moe::layer_shape const& shape = moe::test::ep::shape;
  std::int64_t const H = shape.hidden, E = C.experts, K = C.top_k, T = ref.T;

  moe::layer<C, moe::cuda_policy, moe::comm::nccl> ep(
      {.hidden = shape.hidden, .ffn = shape.ffn, .shared_ffn = shape.shared_ffn, .ep_size = R},
      comm);
  moe::status s = ep.allocate();
  check(s.ok(), s.message());
  moe::detail::layer_impl::tensor_sizes<C> const sizes(ep.shape());
  W* const* const params = &ep.params().w_gate;
  for (int i = 0; i < 15; ++i)
    if (sizes.n[i] > 0) upload(params[i], ref.params_of(i, sizes.n[i]), sizes.n[i]);
  auto const policy = moe::cuda_on(stream);
  s = ep.zero_grad(policy);
  check(s.ok(), s.message());
  moe::problem const pe = ref.problem_for(ep, T);
  std::size_t const bytes = ep.workspace_bytes(pe);
  device_array<unsigned char> ws(static_cast<std::int64_t>(bytes));
  device_array<A> dxs(T * H), ddy(T * H), dye(T * H), ddx(T * H);
  device_array<std::int32_t> dcounts(E);
  device_array<moe::layer_stats> dstats(1);
  upload(dxs.p, ref.x.data() + ref.tb * H, T * H);
  upload(ddy.p, ref.dy.data() + ref.tb * H, T * H);
  s = ep.forward(policy, pe, {dxs.p, dye.p, dstats.p, dcounts.p}, ws.p, bytes);
  check(s.ok(), s.message());
  s = ep.backward(policy, pe, {dxs.p, ddy.p, ddx.p}, ws.p, bytes);
  check(s.ok(), s.message());
  s = ep.all_reduce_replicated_gradients(policy);
  check(s.ok(), s.message());
  check(cudaStreamSynchronize(stream) == cudaSuccess, "cudaStreamSynchronize");
  moe::layer_routing const re = ep.routing(pe, ws.p);
  G* const* const grads = &ep.grads().w_gate;
  ref.compare(
      name, download(re.expert, T * K).data(), download(re.slot, T * K).data(),
      download(dcounts.p, E).data(), download(dstats.p, 1)[0], download(dye.p, T * H).data(),
      download(ddx.p, T * H).data(), [&](int i, std::int64_t n) { return download(grads[i], n); },
      ep.shape(), tol, 1e-6);
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int const devices = moe::backend::cuda::device_count();
  moe::comm::mpi const world(MPI_COMM_WORLD);
  rank = world.rank();
  std::int32_t const R = world.size();
  int fewest = devices;
  MPI_Allreduce(&devices, &fewest, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (fewest < R) {
    if (rank == 0) std::printf("SKIPPED: %d ranks need %d CUDA devices, found %d\n", R, R, fewest);
    MPI_Finalize();
    return 77;
  }
  {
    check(cudaSetDevice(rank) == cudaSuccess, "cudaSetDevice");
    moe::comm::nccl comm;
    moe::status const s = moe::comm::nccl_from_mpi(world, comm);
    check(s.ok(), s.message());
    cudaStream_t stream = nullptr;
    check(cudaStreamCreate(&stream) == cudaSuccess, "cudaStreamCreate");
    comm.set_stream(stream);
    std::vector<std::int64_t> const equal = moe::test::ep::equal_shares(R),
                                    uneven = moe::test::ep::uneven_shares(R);
    if (s.ok()) {
      scenario<moe::configs::top2_fp64>("fp64 equal shares, skewed", comm, stream, equal, 1.5, true,
                                        1e-10);
      scenario<moe::configs::top2_fp64>("fp64 uneven shares, an empty rank", comm, stream, uneven,
                                        0.5, false, 1e-10);
      scenario<moe::configs::top2_fp32>("fp32 equal shares", comm, stream, equal, 0.8, true, 1e-4);
      if (4 % R == 0)
        scenario<moe::test::ep::dropless_swiglu_fp64>("fp64 dropless swiglu, uneven", comm, stream,
                                                      uneven, 2.0, false, 1e-10);
    }
    cudaStreamDestroy(stream);
  }
  int total = 0;
  MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0)
    std::printf("%s: %d failed checks over all ranks\n", total == 0 ? "PASSED" : "FAILED", total);
  MPI_Finalize();
  return total == 0 ? 0 : 1;
}
