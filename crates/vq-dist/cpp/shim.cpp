// The C face of LibTorch's c10d for vq-dist: a TCPStore rendezvous, a ProcessGroupGloo over it,
// and the collectives vqvae-rs needs, on tensors that tch hands over (`at::Tensor*`). Every
// call catches C++ exceptions and returns their message instead.

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

struct VqdGroup {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
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

// `device_interface`: a network interface to bind (GLOO_SOCKET_IFNAME), or empty;
// `device_host`: a host name or address to bind when no interface is given, or empty for the
// machine's own name (gloo's default device).
VqdGroup* vqd_init(const char* master_addr, uint16_t master_port, int rank, int world_size,
                   int64_t timeout_ms, const char* device_interface, const char* device_host,
                   char* err, size_t err_len) {
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
    group = new VqdGroup{store, pg};
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
  return guarded(err, err_len, [&] { group->pg->barrier()->wait(); });
}

// Adds `value` to the store's counter `key`; its new value in `out`.
int vqd_store_add(VqdGroup* group, const char* key, int64_t value, int64_t* out, char* err,
                  size_t err_len) {
  return guarded(err, err_len, [&] { *out = group->store->add(key, value); });
}

}  // extern "C"
