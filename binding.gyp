# binding.gyp: node-gyp build of the CPU-only addon (`npx node-gyp rebuild`), for environments
# without cmake. The source lists come from native/sources.js, the same lists CMakeLists.txt uses.
# The CUDA backend and the native test executable are built by cmake-js (`npm install`) only.
{
  "target_defaults": {
    "include_dirs": ["native", "<!(node -p \"require('node-addon-api').include_dir\")"],
    "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++1y", "-std=gnu++17"],
    "cflags_cc": ["-std=c++17", "-fexceptions", "-O2", "-fPIC"],
    "cflags!": ["-fno-exceptions"],
    "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED",
                "MVEB_CUDA_REASON=\"the addon was built by node-gyp (CPU only); install CMake >= 3.18 and nvcc, then npm rebuild mveb, for the CUDA backend\""]
  },
  "targets": [
    {
      "target_name": "mveb_avx512",
      "type": "static_library",
      "sources": ["<!@(node native/sources.js gyp avx512)"],
      "cflags_cc": ["<!@(node native/sources.js flags avx512)"]
    },
    {
      "target_name": "mveb_amx",
      "type": "static_library",
      "sources": ["<!@(node native/sources.js gyp amx)"],
      "cflags_cc": ["<!@(node native/sources.js flags amx)"]
    },
    {
      "target_name": "mveb_avx2",
      "type": "static_library",
      "sources": ["<!@(node native/sources.js gyp avx2)"],
      "cflags_cc": ["<!@(node native/sources.js flags avx2)"]
    },
    {
      "target_name": "mveb",
      "sources": ["<!@(node native/sources.js gyp core)", "<!@(node native/sources.js gyp binding)"],
      "dependencies": ["mveb_avx512", "mveb_amx", "mveb_avx2"],
      "libraries": ["-lpthread"]
    }
  ]
}
