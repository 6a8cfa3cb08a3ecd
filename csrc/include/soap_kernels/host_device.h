// SOAP_KERNELS_HOST_DEVICE: marks the algorithm cores shared by the C++ CPU and the CUDA kernels.
#pragma once

#if defined(__CUDACC__)
#define SOAP_KERNELS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SOAP_KERNELS_HOST_DEVICE inline
#endif
