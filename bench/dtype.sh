#!/bin/sh
# bench/dtype.sh - throughput of the dtype array conversions against
# memcpy measured in the same run.  Run from the build folder:
#   sh $(srcdir)/bench/dtype.sh [MILLIONS_OF_ELEMENTS]
set -e
make -s bench/dtype_bench
exec ./bench/dtype_bench "$@"
