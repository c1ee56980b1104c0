#pragma once
#include <chrono>
namespace gloo {
// Declared only: ProcessGroupGloo.hpp's inline setTimeout names it; its vtable and that body
// live in libtorch, compiled with the real gloo.
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
}
