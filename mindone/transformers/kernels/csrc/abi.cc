// The library's ABI version: the loader refuses a library whose kernels take other inputs than it expects.
#include "common.h"

extern "C" __attribute__((visibility("default"))) int MindoneKernelsAbi() { return 1; }
