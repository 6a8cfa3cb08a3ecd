"""Print CMake `set()` lines describing the installed torch (used by CMakeLists.txt).

find_package(Torch) fails where the CUDA folder holds only the compiler, so the paths come from
torch.utils.cpp_extension instead.
"""

import glob
import os

import torch
from torch.utils import cpp_extension

site = os.path.dirname(os.path.dirname(torch.__file__))
values = {
    "TORCH_INCLUDE_DIRS": ";".join(cpp_extension.include_paths()),
    "TORCH_LIBRARY_DIR": os.path.join(os.path.dirname(torch.__file__), "lib"),
    "TORCH_CXX11_ABI": str(int(torch._C._GLIBCXX_USE_CXX11_ABI)),
    "TORCH_VERSION_STRING": torch.__version__,
    "TORCH_CUDA_VERSION": torch.version.cuda or "",
    # CUDA headers shipped as wheels (nvidia/cu13/include) complete a compiler-only CUDA folder.
    "NVIDIA_WHEEL_INCLUDE_DIRS": ";".join(sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include")))),
    "NVIDIA_WHEEL_LIBRARY_DIRS": ";".join(sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "lib")))),
}
for key, value in values.items():
    print(f'set({key} "{value}")')
