#pragma once
#include <memory>
#include <vector>
#include <string>
#include <chrono>
namespace gloo { class Context; }
