// The C face of LibTorch's c10d for vq-dist: a TCPStore rendezvous, a ProcessGroupGloo (CPU
// tensors) or, in a CUDA build with `VQD_NCCL`, a ProcessGroupNCCL (CUDA tensors) over it, and
// the collectives vqvae-rs needs, on tensors that tch hands over (`at::Tensor*`). Both groups
// are used through c10d's `Backend` interface. Every call catches C++ exceptions and returns
// their message instead.

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef VQD_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

// Which engine runs the collectives (vq-dist's `Backend`).
enum VqdBackend { VQD_GLOO = 0, VQD_NCCL_BACKEND = 1 };

struct VqdGroup {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> pg;
  int backend;
  // The CUDA device of an NCCL group (its barrier's tensor lives there); -1 for gloo.
  int cuda_device;
};

namespace {

void set_error(char* err, size_t len, const char* message) {
  if (err != nullptr && len > 0) {
    std::strncpy(err, message, len - 1);
    err[len - 1] = '\0';
  }
}

template <typename F>
int guarded(char* err, size_t len, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    set_error(err, len, e.what());
  } catch (...) {
    set_error(err, len, "an unknown C++ exception");
  }
  return 1;
}

}  // namespace

extern "C" {

// Whether this build can make an NCCL group (compiled against a CUDA LibTorch with NCCL's
// headers).
int vqd_has_nccl() {
#ifdef VQD_NCCL
  return 1;
#else
  return 0;
#endif
}

// `backend`: VQD_GLOO or VQD_NCCL_BACKEND; `cuda_device`: the NCCL group's device (the rank's
// LOCAL_RANK), ignored by gloo.
// `device_interface`: a network interface to bind (GLOO_SOCKET_IFNAME), or empty;
// `device_host`: a host name or address to bind when no interface is given, or empty for the
// machine's own name (gloo's default device).
VqdGroup* vqd_init(const char* master_addr, uint16_t master_port, int rank, int world_size,
                   int64_t timeout_ms, int backend, int cuda_device, const char* device_interface,
                   const char* device_host, char* err, size_t err_len) {
  VqdGroup* group = nullptr;
  guarded(err, err_len, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions options;
    options.port = master_port;
    options.isServer = rank == 0;
    options.numWorkers = world_size;
    options.waitWorkers = true;
    options.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(master_addr, options);
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>("vqvae-rs", store);
    if (backend == VQD_NCCL_BACKEND) {
#ifdef VQD_NCCL
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(cuda_device));
      // Blocking waits: a collective's `wait()` then holds the host until it completes or the
      // timeout passes, and throws, so a lost rank is an error here (named by vq-dist's
      // heartbeats) as with gloo, not a later abort by NCCL's watchdog; the host also sees the
      // collective's real duration. Read by the constructor; a user's own setting stands.
      setenv("TORCH_NCCL_BLOCKING_WAIT", "1", 0);
      auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
      nccl_options->timeout = timeout;
      auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, rank, world_size,
                                                            nccl_options);
      // As `init_process_group(device_id=...)` does: one communicator, on this rank's device.
      pg->setBoundDeviceId(
          at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(cuda_device)));
      group = new VqdGroup{store, pg, backend, cuda_device};
      return;
#else
      throw std::runtime_error(
          "this build of vq-dist has no NCCL (it was not built against a CUDA LibTorch with "
          "NCCL's headers): use the gloo backend");
#endif
    }
    auto pg_options = c10d::ProcessGroupGloo::Options::create(timeout);
    if (device_interface != nullptr && device_interface[0] != '\0') {
      pg_options->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForInterface(device_interface));
    } else if (device_host != nullptr && device_host[0] != '\0') {
      pg_options->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForHostname(device_host));
    } else {
      pg_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank, world_size, pg_options);
    group = new VqdGroup{store, pg, backend, -1};
  });
  return group;
}

void vqd_free(VqdGroup* group) { delete group; }

int vqd_allreduce_sum(VqdGroup* group, at::Tensor* tensor, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions options;
    options.reduceOp = c10d::ReduceOp::SUM;
    group->pg->allreduce(tensors, options)->wait();
  });
}

int vqd_broadcast(VqdGroup* group, at::Tensor* tensor, int root, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    group->pg->broadcast(tensors, options)->wait();
  });
}

int vqd_barrier(VqdGroup* group, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    if (group->backend == VQD_NCCL_BACKEND) {
      // NCCL's own barrier guesses the device from the rank; an all-reduce of one number on
      // this group's device waits for every rank just the same.
      std::vector<at::Tensor> tensors{
          at::zeros({1}, at::TensorOptions().device(at::kCUDA, group->cuda_device))};
      group->pg->allreduce(tensors)->wait();
      tensors[0].cpu();  // the host waits for the device, as a barrier should
      return;
    }
    group->pg->barrier()->wait();
  });
}

// Adds `value` to the store's counter `key`; its new value in `out`.
int vqd_store_add(VqdGroup* group, const char* key, int64_t value, int64_t* out, char* err,
                  size_t err_len) {
  return guarded(err, err_len, [&] { *out = group->store->add(key, value); });
}

}  // extern "C"
