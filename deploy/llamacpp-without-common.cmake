# Read by CMake right after llama.cpp's project() call when llama-cpp-python is built
# (CMAKE_ARGS="-DCMAKE_PROJECT_llama.cpp_INCLUDE=<this file>", set by ./dev and the images).
#
# llama-cpp-python forces llama.cpp's `common` library on, though its wheel does not ship it
# and facestream does not load it; it is about half of what a first install compiles.  A
# normal variable here wins over the forced cache entry inside llama.cpp's directory (its
# option() leaves an existing variable alone, policy CMP0077), so `common` is neither built
# nor installed.  The libraries the wheel ships (llama, ggml, ggml-base, ggml-cpu) are
# unchanged.
set(LLAMA_BUILD_COMMON OFF)
