
#ifdef __CUDACC_RTC__
  #include <cuda/std/cstdint>
  using cuda::std::uint8_t;
  using cuda::std::uint16_t;
  using cuda::std::uint32_t;
  using cuda::std::uint64_t;
  using cuda::std::int8_t;
  using cuda::std::int16_t;
  using cuda::std::int32_t;
  using cuda::std::int64_t;

  #include <cuda/std/type_traits>
  namespace std {
    using cuda::std::is_same;
    using cuda::std::is_same_v;
    using cuda::std::is_integral;
    using cuda::std::is_signed;
    using cuda::std::is_unsigned;
    using cuda::std::is_floating_point;
    using cuda::std::enable_if;
    using cuda::std::conditional;
  }

  // NVRTC uses asm/volatile instead of __asm__/__volatile__ (gcc extension).
  #ifndef __asm__
  #define __asm__ asm
  #endif
  #ifndef __volatile__
  #define __volatile__ volatile
  #endif
#else
  #include <cstdint>
  #include <type_traits>
  #include <cuda.h>
#endif

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 700)
#define __shfl_sync(mask, var, lane, width) \
        __shfl((var), (lane), (width))

#define __shfl_down_sync(mask, var, offset, width) \
        __shfl_down((var), (offset), (width))

#define __shfl_up_sync(mask, var, offset, width) \
        __shfl_up((var), (offset), (width))
#endif

#if (((__CUDACC_VER_MAJOR__ == 11) && (__CUDACC_VER_MINOR__ >= 4)) || \
     (__CUDACC_VER_MAJOR__ > 11))
#define TVM_ENABLE_L2_PREFETCH 1
#else
#define TVM_ENABLE_L2_PREFETCH 0
#endif

#ifdef _WIN32
  using uint = unsigned int;
  using uchar = unsigned char;
  using ushort = unsigned short;
  using int64_t = long long;
  using uint64_t = unsigned long long;
#else
  #define uint unsigned int
  #define uchar unsigned char
  #define ushort unsigned short
#endif
extern "C" __global__ void __launch_bounds__(128) dcc_fc4096_d05_b1_kernel(float* __restrict__ bias_ptr, uchar* __restrict__ code_ptr, float* __restrict__ codebook_ptr, ushort* __restrict__ col_ptr, int* __restrict__ rowptr_ptr, float* __restrict__ x_ptr, float* __restrict__ y_ptr);
extern "C" __global__ void __launch_bounds__(128) dcc_fc4096_d05_b1_kernel(float* __restrict__ bias_ptr, uchar* __restrict__ code_ptr, float* __restrict__ codebook_ptr, ushort* __restrict__ col_ptr, int* __restrict__ rowptr_ptr, float* __restrict__ x_ptr, float* __restrict__ y_ptr) {
  __shared__ alignas(64) float cb_ptr[32];
  alignas(64) float acc_ptr[1];
  if (((int)threadIdx.y) < 1) {
    cb_ptr[((int)threadIdx.x)] = codebook_ptr[((int)threadIdx.x)];
  }
  __syncthreads();
  int cse_v1 = ((((int)blockIdx.x) * 4) + ((int)threadIdx.y));
  int i = ((((int)blockIdx.x) * 4) + ((int)threadIdx.y));
  int lo = rowptr_ptr[((((int)blockIdx.x) * 4) + ((int)threadIdx.y))];
  int hi = rowptr_ptr[(((((int)blockIdx.x) * 4) + ((int)threadIdx.y)) + 1)];
  acc_ptr[0] = 0x0p+0f/*0.000000e+00*/;
  for (int t = 0; t < ((((hi + 31) - lo) - ((int)threadIdx.x)) >> 5); ++t) {
    int cse_v2 = (((t * 32) + lo) + ((int)threadIdx.x));
    int j = (((t * 32) + lo) + ((int)threadIdx.x));
    acc_ptr[0] = (acc_ptr[0] + (cb_ptr[((int)code_ptr[(((t * 32) + lo) + ((int)threadIdx.x))])] * x_ptr[((int)col_ptr[(((t * 32) + lo) + ((int)threadIdx.x))])]));
  }
  acc_ptr[0] = (acc_ptr[0] + __shfl_down_sync(__activemask(), acc_ptr[0], 16, 32));
  acc_ptr[0] = (acc_ptr[0] + __shfl_down_sync(__activemask(), acc_ptr[0], 8, 32));
  acc_ptr[0] = (acc_ptr[0] + __shfl_down_sync(__activemask(), acc_ptr[0], 4, 32));
  acc_ptr[0] = (acc_ptr[0] + __shfl_down_sync(__activemask(), acc_ptr[0], 2, 32));
  acc_ptr[0] = (acc_ptr[0] + __shfl_down_sync(__activemask(), acc_ptr[0], 1, 32));
  if (((int)threadIdx.x) == 0) {
    y_ptr[((((int)blockIdx.x) * 4) + ((int)threadIdx.y))] = (acc_ptr[0] + bias_ptr[((((int)blockIdx.x) * 4) + ((int)threadIdx.y))]);
  }
}

